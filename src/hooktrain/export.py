"""Writing the exported model: a killed run leaves the old file or the new one, never half of one."""

import os
from pathlib import Path

import torch


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)
