"""Per-layer optimizer settings: parameter groups chosen by module glob or type, e.g. a lower learning rate for ``features.*``.

    task:
      param_groups:
        - {targets: ["features.*"], lr: 0.0002}
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hooktrain.errors import HooktrainError
from hooktrain.select import select_from


def parameter_groups(model: nn.Module, groups: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The optimizer's groups: first the parameters no entry selects (the optimizer's own settings), then one group per
    entry with its settings (every key but ``targets`` and ``types``). A parameter goes to the first entry that selects it.

    Raises:
        HooktrainError: an entry that is not a mapping, selects no module, or only parameters an earlier entry took.
    """
    taken: set[int] = set()
    chosen = []
    for index, entry in enumerate(groups or []):
        field = f"task.param_groups[{index}]"
        if not isinstance(entry, dict) or not (entry.get("targets") or entry.get("types")):
            raise HooktrainError(f"`{field}` must be a mapping with `targets` (globs) or `types`, and settings such as lr, got {entry!r}")
        modules = [module for _, module in select_from(model, entry, field)]
        # A module and its child can both match a glob (features, features.conv1): each parameter once.
        params = list({id(p): p for module in modules for p in module.parameters() if id(p) not in taken}.values())
        if not params:
            raise HooktrainError(f"`{field}` selects no parameter that an earlier entry did not take; widen its targets or drop it")
        taken |= {id(param) for param in params}
        chosen.append({"params": params, **{key: value for key, value in entry.items() if key not in ("targets", "types")}})
    rest = [param for param in model.parameters() if id(param) not in taken]
    return ([{"params": rest}] if rest else []) + chosen


def check_group_settings(optimizer: torch.optim.Optimizer, groups: Sequence[Mapping[str, Any]] | None) -> None:
    """Every key of a ``param_groups`` entry is a setting of the optimizer: torch would keep a misspelt one silently."""
    for index, entry in enumerate(groups or []):
        for key in entry:
            if key not in ("targets", "types") and key not in optimizer.defaults:
                raise HooktrainError(
                    f"`task.param_groups[{index}].{key}` is not a setting of {type(optimizer).__name__}; "
                    f"its settings are {', '.join(optimizer.defaults)}"
                )
