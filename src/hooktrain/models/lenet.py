"""LeNet-5 (LeCun et al., 1998) with ReLU and max pooling."""

from collections import OrderedDict

from torch import Tensor, nn

from hooktrain.errors import HooktrainError


class LeNet(nn.Module):
    """Two 5x5 convolutions and three fully connected layers.

    Args:
        in_channels: channels of the input images.
        num_classes: number of outputs (logits).
        image_size: side of the square input; 32 in the original paper, at least 16.

    Example:
        >>> LeNet(in_channels=1, num_classes=10)(torch.zeros(4, 1, 32, 32)).shape
        torch.Size([4, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2  # two (5x5 conv, 2x2 pool) stages
        if side < 1:
            raise HooktrainError(f"`model.image_size` must be at least 16 for LeNet, got {image_size}")
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 6, kernel_size=5),
                act1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(6, 16, kernel_size=5),
                act2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(16 * side * side, 120),
                act3=nn.ReLU(),
                fc2=nn.Linear(120, 84),
                act4=nn.ReLU(),
                fc3=nn.Linear(84, num_classes),
            )
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, num_classes)
        return self.classifier(self.features(x))
