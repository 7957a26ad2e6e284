"""MNIST and Fashion-MNIST from their standard gzip IDX files: the official 60,000 training and 10,000 test images."""

import gzip
import logging
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hooktrain.data.tensors import TensorDataModule
from hooktrain.errors import HooktrainError, check_positive_int

log = logging.getLogger(__name__)

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain) as an array: 2 zero bytes, a type byte, the number of dimensions, then big-endian sizes."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _DTYPES:
        raise HooktrainError(f"{path} is not an IDX file (it must start with two zero bytes and a type byte); download it again")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise HooktrainError(f"{path} holds {values.size} values where its header says {shape}: the file is cut short; download it again")
    return values.reshape(shape)


class IDXDataModule(TensorDataModule):
    """Images and labels from the four IDX files in ``data_dir``; the test split is the data set's own test set.

    Args:
        data_dir: the folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
        name: ``mnist`` or ``fashion_mnist``: where ``download`` fetches the files from.
        download: fetch missing files into ``data_dir`` (needs a network).
        mirror: the URL ``download`` fetches the files under; empty: the data set's own (``MIRRORS``).
        image_size: side of the images the model takes (LeNet: 32); the files hold 28x28.
        num_classes: classes in the labels (10 for both).
        **kwargs: batch size, validation fraction (of the training images), seed and workers of :class:`TensorDataModule`.
    """

    def __init__(
        self, data_dir: str, name: str = "mnist", download: bool = False, mirror: str = "", image_size: int = 28, num_classes: int = 10, **kwargs
    ) -> None:
        if name not in MIRRORS:
            raise HooktrainError(f"`data.name` must be one of {', '.join(MIRRORS)}, got {name!r}")
        if kwargs.get("test_fraction"):
            raise HooktrainError("`data.test_fraction` does not apply here: the test split is the data set's own test set; remove it")
        super().__init__(**{**kwargs, "test_fraction": 0.0})
        self.data_dir = Path(data_dir).expanduser()
        self.name = name
        self.download = download
        self.mirror = (mirror or MIRRORS[name]).rstrip("/") + "/"
        self.image_size = check_positive_int("data.image_size", image_size)
        self.num_classes = check_positive_int("data.num_classes", num_classes)

    def prepare_data(self) -> None:
        """Lightning calls this on one process per node before ``setup``: the only place that downloads."""
        missing = [name for names in FILES.values() for name in names if not (self.data_dir / name).exists()]
        if not missing:
            return
        if not self.download:
            raise HooktrainError(
                f"`data.data_dir`: {self.data_dir} lacks {', '.join(missing)}; put the {self.name} IDX files there "
                f"(from {self.mirror}) or set data.download=true"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in missing:
            url = self.mirror + name
            log.info("downloading %s", url)
            partial = self.data_dir / f"{name}.part"
            try:
                urllib.request.urlretrieve(url, partial)
            except OSError as error:
                partial.unlink(missing_ok=True)
                detail = error if isinstance(error, urllib.error.HTTPError) else getattr(error, "reason", error)  # not "<urlopen error ...>"
                raise HooktrainError(
                    f"`data.download`: cannot fetch {url} ({detail}); without a network, copy the IDX files into {self.data_dir}"
                ) from None
            partial.rename(self.data_dir / name)

    def load(self) -> tuple[Tensor, Tensor]:
        return self._split("train")

    def load_test(self) -> tuple[Tensor, Tensor]:
        return self._split("test")

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        self.prepare_data()
        images_file, labels_file = (self.data_dir / name for name in FILES[split])
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise HooktrainError(f"{images_file} and {labels_file} must hold (N, H, W) images and N labels, got {images.shape} and {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise HooktrainError(f"{labels_file} has labels outside 0..{self.num_classes - 1}; set data.num_classes")
        pixels = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) / 255.0
        if pixels.shape[-1] != self.image_size:
            pixels = F.interpolate(pixels, size=self.image_size, mode="bilinear", align_corners=False)
        return pixels, torch.from_numpy(labels.astype(np.int64))
