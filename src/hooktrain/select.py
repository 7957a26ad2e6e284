"""Module selection: which modules of a model a plugin hooks, from name globs and type names."""

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from hooktrain.errors import HooktrainError


def default_selection(model: nn.Module) -> list[str]:
    """Leaf modules that own parameters: the layers people mean by "every layer"."""
    return [
        name
        for name, module in model.named_modules()
        if name and next(module.children(), None) is None and next(module.parameters(recurse=False), None) is not None
    ]


def module_names(model: nn.Module) -> dict[int, list[str]]:
    """Every qualified name of each submodule, by ``id``: a module shared between two places has two."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    return names


def select_modules(
    model: nn.Module, targets: list[str], types: list[str], field: str, default_types: tuple[str, ...] = ()
) -> list[tuple[str, nn.Module]]:
    """Returns ``(qualified name, module)`` pairs in definition order, each module once.

    ``targets`` are globs over ``named_modules()`` names (``features.*``, ``*fc?``); a module shared
    between two places matches by either of its names and is listed once, under its first. ``types``
    are class names (``Conv2d``, ``Linear``; a base class name matches its subclasses). Given both, a
    module must match both; given neither, the modules of any of ``default_types`` (a plugin's own default,
    activation_logger's nonlinearities), and where there are none, the leaf modules with parameters.

    Raises:
        HooktrainError: a pattern or type name matches no module; the message lists the modules.
    """
    named = [(name, module) for name, module in model.named_modules() if name]
    if not targets and not types:
        by_type = [(name, module) for name, module in named if any(_is_instance_by_name(module, kind) for kind in default_types)]
        if by_type:
            return by_type
        chosen = set(default_selection(model))
        return [(name, module) for name, module in named if name in chosen]
    names = module_names(model)
    every_name = [name for all_names in names.values() for name in all_names]

    def describe_modules() -> str:
        listed = ", ".join(f"{name} ({type(module).__name__})" for name, module in named[:40])
        return listed + (", ..." if len(named) > 40 else "")

    for pattern in targets:
        if not any(fnmatchcase(name, pattern) for name in every_name):
            raise HooktrainError(
                f"`{field}.targets`: pattern {pattern!r} matches no module of the model; its modules are: {describe_modules()}"
            )
    for type_name in types:
        if not any(_is_instance_by_name(module, type_name) for _, module in named):
            raise HooktrainError(
                f"`{field}.types`: no module of the model is a {type_name!r}; its modules are: {describe_modules()}"
            )
    selected = [
        (name, module)
        for name, module in named
        if (not targets or any(fnmatchcase(alias, pattern) for alias in names[id(module)] for pattern in targets))
        and (not types or any(_is_instance_by_name(module, type_name) for type_name in types))
    ]
    if not selected:
        raise HooktrainError(f"`{field}`: no module matches both targets {targets} and types {types}")
    return selected


def select_from(model: nn.Module, entry: Mapping[str, Any], field: str) -> list[tuple[str, nn.Module]]:
    """:func:`select_modules` with a config entry's ``targets`` and ``types``, each a list or one string (init rules, parameter groups)."""
    targets, types = ([value] if isinstance(value, str) else list(value or []) for value in (entry.get("targets"), entry.get("types")))
    return select_modules(model, targets, types, field)


def _is_instance_by_name(module: nn.Module, type_name: str) -> bool:
    return any(cls.__name__ == type_name for cls in type(module).__mro__)
