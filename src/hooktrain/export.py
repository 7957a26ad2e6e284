"""The exported model: weights a plain PyTorch model loads, whatever plugins did to it during training."""

import os
from pathlib import Path

import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a killed run leaves the old file or the new one, never half."""
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with pruning made permanent: ``weight`` with zeros, no ``_orig``/``_mask`` keys.

    Works on the state dict alone, so the trained model keeps its masks (and a resumed run its schedule).
    """
    state = model.state_dict()
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():  # read only, as prune.is_pruned does
            if isinstance(hook, prune.BasePruningMethod):
                key = f"{name}.{hook._tensor_name}" if name else hook._tensor_name
                state[key] = state.pop(f"{key}_orig") * state.pop(f"{key}_mask")
    return state
