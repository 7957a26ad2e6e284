"""Your own tensors from a file: ``.pt`` (a dict saved by ``torch.save``) or ``.npz`` (``numpy.savez``)."""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hooktrain.data.tensors import TensorDataModule
from hooktrain.errors import HooktrainError


class TensorFileDataModule(TensorDataModule):
    """Images ``(N, C, H, W)`` or ``(N, H, W)`` and integer labels ``(N,)`` stored under two keys of one file.

    Args:
        path: a ``.pt`` file holding a dict of tensors (read with ``weights_only=True``), or an ``.npz`` file.
        images_key: the key of the images.
        labels_key: the key of the labels, 0 to ``num_classes - 1``.
        num_classes: the classes; None: the largest label + 1.
        **kwargs: batch size, split fractions, seed and workers of :class:`TensorDataModule`.
    """

    def __init__(self, path: str, images_key: str = "images", labels_key: str = "labels", num_classes: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = Path(path).expanduser()
        if self.path.suffix not in (".pt", ".pth", ".npz"):
            raise HooktrainError(f"`data.path` must be a .pt or .npz file, got {str(self.path)!r}")
        if not self.path.is_file():
            raise HooktrainError(f"`data.path`: {self.path} does not exist; write your arrays with torch.save({{'images': ..., 'labels': ...}}, path) or numpy.savez")
        self.images_key, self.labels_key = images_key, labels_key
        self._arrays: tuple[Tensor, Tensor] | None = None
        self.num_classes = num_classes if num_classes is not None else int(self._read()[1].max()) + 1

    def load(self) -> tuple[Tensor, Tensor]:
        images, labels = self._read()
        if len(labels) and int(labels.max()) >= self.num_classes:
            raise HooktrainError(f"`data.num_classes`: {self.path} has label {int(labels.max())}, so it needs at least {int(labels.max()) + 1} classes")
        return images, labels

    def _read(self) -> tuple[Tensor, Tensor]:
        if self._arrays is not None:
            return self._arrays
        if self.path.suffix == ".npz":
            with np.load(self.path) as stored:
                found = {key: torch.from_numpy(stored[key]) for key in stored.files}
        else:
            found = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(found, dict):
                raise HooktrainError(f"`data.path`: {self.path} holds a {type(found).__name__}; save a dict: torch.save({{'images': x, 'labels': y}}, path)")
        for field, key in (("images_key", self.images_key), ("labels_key", self.labels_key)):
            if key not in found:
                raise HooktrainError(f"`data.{field}`: {self.path} has no {key!r}; its keys are {', '.join(map(str, found))}")
        images, labels = torch.as_tensor(found[self.images_key]), torch.as_tensor(found[self.labels_key])
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels) or labels.is_floating_point():
            raise HooktrainError(
                f"`data.path`: {self.path} must hold images (N, C, H, W) or (N, H, W) and N integer labels, "
                f"got {tuple(images.shape)} and {tuple(labels.shape)} {labels.dtype}"
            )
        if len(labels) and labels.min() < 0:
            raise HooktrainError(f"`data.path`: {self.path} has negative labels; labels are 0 to num_classes - 1")
        self._arrays = images.float(), labels.long()
        return self._arrays
