"""scikit-learn's handwritten digits: 1,797 images of 8x8 pixels, shipped inside the package (no download)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from hooktrain.data.tensors import TensorDataModule
from hooktrain.errors import check_positive_int


class DigitsDataModule(TensorDataModule):
    """The digits 0-9 as ``(1, image_size, image_size)`` images, resized bilinearly from 8x8.

    Args:
        image_size: side of the images the model takes (LeNet wants 32; 8 keeps the original).
        **kwargs: batch size, split fractions, seed and workers of :class:`TensorDataModule`.
    """

    num_classes = 10

    def __init__(self, image_size: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size = check_positive_int("data.image_size", image_size)

    def load(self) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
        if self.image_size != 8:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return images, torch.tensor(digits.target, dtype=torch.long)
