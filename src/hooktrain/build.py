"""Config nodes to objects through hydra.utils.instantiate, with failures turned into one sentence."""

import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from hooktrain.errors import HooktrainError
from hooktrain.plugin import HookPlugin
from hooktrain.validate import check_arguments


def build(node: DictConfig, field: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)`` after checking the node against its target's signature; a failure becomes
    a HooktrainError naming ``field``."""
    check_arguments(node, field)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, HooktrainError):
            cause = cause.__cause__
        if cause is not None:  # the object's own check, which knows its argument but not its place in the config
            raise HooktrainError(re.sub(r"^`(\w+)`", lambda m: _place(node, field, m[1]) or m[0], str(cause))) from None
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        detail = f"{type(root).__name__}: {root}" if root is not error else str(error).splitlines()[0]
        raise HooktrainError(f"cannot build `{field}` ({node.get('_target_')}): {detail}") from error


def _place(node: DictConfig, field: str, key: str) -> str | None:
    """``field.path.key`` where ``key`` is an argument of exactly one node inside ``node`` (nested models), else None."""
    if key in node:
        return f"`{field}.{key}`"
    places = [place for name, child in node.items_ex(resolve=False) if isinstance(child, DictConfig) and (place := _place(child, f"{field}.{name}", key))]
    return places[0] if len(places) == 1 else None


def build_plugins(nodes: DictConfig | None) -> list[HookPlugin]:
    """One plugin per key of ``plugins``; the key becomes the plugin's name."""
    plugins = []
    for name, node in (nodes or {}).items():
        plugin = build(node, f"plugins.{name}", name=name)
        if not isinstance(plugin, HookPlugin):
            raise HooktrainError(
                f"`plugins.{name}._target_` must name a subclass of hooktrain.HookPlugin, got {type(plugin).__name__}"
            )
        plugins.append(plugin)
    return plugins
