"""Small data files of each kind hooktrain reads, written the way their own tools write them."""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from hooktrain.data.idx import FILES


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of MNIST's files: two zero bytes, 0x08 (unsigned bytes), the number of dimensions, big-endian sizes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(folder: Path, train: int = 60, test: int = 20, classes: int = 10, seed: int = 0) -> Path:
    """The four gzip IDX files of an MNIST-like set: 28x28 noise with a bright band at a row set by the label, so a model can learn it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count) % classes
        images = rng.integers(0, 30, size=(count, 28, 28))
        for index, label in enumerate(labels):
            images[index, 4 + 2 * label : 6 + 2 * label] = 255
        images_file, labels_file = FILES[split]
        write_idx(folder / images_file, images)
        write_idx(folder / labels_file, labels)
    return folder


def write_image_folder(root: Path, classes: tuple[str, ...] = ("circle", "square", "triangle"), per_class: int = 8, size: int = 12) -> Path:
    """``root/<class>/<n>.png``: small RGB PNGs of a different brightness per class, written with Pillow."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3)) + 80 * label
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index}.png")
    return root


def write_tensor_file(path: Path, count: int = 64, classes: int = 4) -> Path:
    """``torch.save({"images", "labels"})`` or ``numpy.savez`` by the suffix: (N, 8, 8) images, labels 0..classes-1."""
    labels = np.arange(count) % classes
    images = (np.random.default_rng(0).normal(size=(count, 8, 8)) + labels[:, None, None]).astype(np.float32)
    if path.suffix == ".npz":
        np.savez(path, images=images, labels=labels)
    else:
        torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, path)
    return path
