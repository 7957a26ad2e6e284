"""Building blocks for models composed in config: a conv block and a named Sequential."""

from collections import OrderedDict

from torch import nn


class ConvBlock(nn.Sequential):
    """``conv (3x3, same padding) -> norm -> act -> pool (2x2)``: halves the image side.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        batch_norm: use BatchNorm2d (else no normalization layer).
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv=nn.Conv2d(in_channels, out_channels, 3, padding=1))
        if batch_norm:
            layers["norm"] = nn.BatchNorm2d(out_channels)
        layers["act"] = nn.ReLU()
        layers["pool"] = nn.MaxPool2d(2)
        super().__init__(layers)


def sequential(**children: nn.Module) -> nn.Sequential:
    """An ``nn.Sequential`` whose children keep the names given in config (``features``, ``head``).

    Composition stays a config: each keyword is a sub-model config, e.g.
    ``{_target_: hooktrain.models.sequential, features: {...}, head: {...}}``.
    """
    return nn.Sequential(OrderedDict(children))
