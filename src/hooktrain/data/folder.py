"""Your own images, one folder per class: read once into memory, resized, split by seed like the built-in data."""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hooktrain.data.tensors import TensorDataModule
from hooktrain.errors import HooktrainError, check_positive_int

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolderDataModule(TensorDataModule):
    """``root/<class>/<image>``: the class names sorted are labels 0, 1, ...; every image resized to ``image_size``.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: side of the square images the model takes.
        channels: 1 (grayscale) or 3 (RGB): every image is converted to it.
        **kwargs: batch size, split fractions, seed and workers of :class:`TensorDataModule`.
    """

    def __init__(self, root: str, image_size: int = 32, channels: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise HooktrainError(f"`data.channels` must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        self.root = Path(root).expanduser()
        self.image_size = check_positive_int("data.image_size", image_size)
        self.channels = channels
        self.classes = self._classes()
        self.num_classes = len(self.classes)

    def _classes(self) -> list[str]:
        if not self.root.is_dir():
            raise HooktrainError(f"`data.root`: {self.root} is not a folder; point it at a folder with one sub-folder of images per class")
        classes = sorted(path.name for path in self.root.iterdir() if path.is_dir() and not path.name.startswith("."))
        if len(classes) < 2:
            raise HooktrainError(f"`data.root`: {self.root} has {len(classes)} class folder(s); a classifier needs one sub-folder per class, at least 2")
        return classes

    def load(self) -> tuple[Tensor, Tensor]:
        from PIL import Image  # Pillow comes with matplotlib

        images, labels = [], []
        mode = "L" if self.channels == 1 else "RGB"
        for label, name in enumerate(self.classes):
            files = sorted(path for path in (self.root / name).iterdir() if path.suffix.lower() in EXTENSIONS)
            if not files:
                raise HooktrainError(f"`data.root`: {self.root / name} holds no image ({', '.join(EXTENSIONS)})")
            for path in files:
                try:
                    with Image.open(path) as image:
                        pixels = np.asarray(image.convert(mode).resize((self.image_size, self.image_size), Image.BILINEAR))
                except OSError as error:
                    raise HooktrainError(f"`data.root`: cannot read {path} as an image ({error}); remove it or replace it") from None
                images.append(torch.from_numpy(pixels.copy()).reshape(self.image_size, self.image_size, self.channels))
                labels.append(label)
        return torch.stack(images).permute(0, 3, 1, 2).float() / 255.0, torch.tensor(labels, dtype=torch.long)
