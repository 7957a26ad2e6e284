"""Synthetic images: one random prototype per class plus noise. Learnable, instant, for quick tests."""

import torch
from torch import Tensor

from hooktrain.data.tensors import TensorDataModule
from hooktrain.errors import check_positive_int


class SyntheticDataModule(TensorDataModule):
    """``num_samples`` images ``(channels, image_size, image_size)``: class prototype + Gaussian noise.

    Args:
        num_samples: samples in all splits together.
        num_classes: number of classes.
        channels: image channels.
        image_size: image side.
        noise: std of the noise added to the prototypes (which have std 1).
        **kwargs: batch size, split fractions, seed and workers of :class:`TensorDataModule`.
    """

    def __init__(
        self, num_samples: int = 512, num_classes: int = 10, channels: int = 1, image_size: int = 8, noise: float = 1.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.num_samples = check_positive_int("data.num_samples", num_samples)
        self.num_classes = check_positive_int("data.num_classes", num_classes)
        self.channels = check_positive_int("data.channels", channels)
        self.image_size = check_positive_int("data.image_size", image_size)
        self.noise = noise

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.channels, self.image_size, self.image_size)
        prototypes = torch.randn((self.num_classes, *shape), generator=generator)
        labels = torch.randint(self.num_classes, (self.num_samples,), generator=generator)
        images = prototypes[labels] + self.noise * torch.randn((self.num_samples, *shape), generator=generator)
        return images, labels
