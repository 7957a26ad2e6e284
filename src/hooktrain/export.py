"""Files written whole or not at all: a temporary file beside the target, fsync, then a rename over it."""

import os
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file in ``path``'s folder, flushed to disk, then ``os.replace``: a killed run
    leaves the old file or the new one, never half of one. Leftovers of killed writes are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.partial"):
        stale.unlink(missing_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints through :func:`save_atomic`, whatever ``TMPDIR`` is.

    Lightning's own save stages the file in ``TMPDIR`` and moves it; on another file system that
    move is a truncate-then-copy, and a kill during it leaves a 0-byte ``last.ckpt``. Remote paths
    (``s3://``) keep Lightning's way.
    """

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: object | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomic(checkpoint, Path(path))
