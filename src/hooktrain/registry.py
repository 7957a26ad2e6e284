"""Plugin discovery and listing: a plugin is a config in conf/plugins/ whose _target_ is a HookPlugin."""

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from hooktrain.errors import HooktrainError


@dataclass
class PluginInfo:
    name: str
    target: str
    description: str
    parameters: list[str]  # "key: default  # comment", as the YAML says


def training_plugins(config_dir: Path) -> list[str]:
    """The plugins that run in training (their class says ``trains``): what the test kit and the benchmark exercise."""
    return [name for name in plugin_names(config_dir) if plugin_class(config_dir, name).trains]


def plugin_names(config_dir: Path) -> list[str]:
    """The names ``plugins=[...]`` accepts: one per ``<config_dir>/plugins/<name>.yaml``.

    The folder holding ``config_dir`` is put on ``sys.path`` so that ``plugins.<name>`` imports
    (train.py gets this for free: Python puts the script's folder first on the path).
    """
    root = str(config_dir.resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return group_options(config_dir, "plugins")


def group_options(config_dir: Path, group: str) -> list[str]:
    """The options ``<group>=...`` accepts, sorted: one per ``<config_dir>/<group>/<name>.yaml``."""
    return sorted(path.stem for path in (config_dir / group).glob("*.yaml"))


def check_plugin_overrides(args: list[str], config_dir: Path) -> None:
    """Stops with the list of known plugins when a ``plugins=[...]`` override names an unknown one.

    Hydra reports an unknown option of a multi-select group without listing the options; this runs
    before Hydra composes, on the same parsed overrides. Malformed overrides are left to Hydra.
    """
    try:
        overrides = OverridesParser.create().parse_overrides([arg for arg in args if not arg.startswith("-")])
    except HydraException:
        return
    known = plugin_names(config_dir)
    for override in overrides:
        if override.key_or_group != "plugins" or override.is_delete():
            continue
        value = override.value()
        listed = value if isinstance(value, list) else [value]
        twice = sorted({name for name in listed if listed.count(name) > 1})
        if twice:
            raise SystemExit(f"error: `{override.input_line}` lists {', '.join(twice)} more than once; list each plugin once")
        for name in listed:
            if name not in known:
                raise SystemExit(
                    f"error: unknown plugin {name!r} in `{override.input_line}`; available plugins: {', '.join(known)} "
                    "(python -m hooktrain plugins describes them)"
                )


def available_plugins(config_dir: Path) -> list[PluginInfo]:
    """Every ``<config_dir>/plugins/<name>.yaml``, with its class's one-line docstring and its parameters."""
    if not (config_dir / "plugins").is_dir():
        raise HooktrainError(f"no plugin configs: {config_dir / 'plugins'} is not a folder; run from the project root or pass --config-dir")
    return [_describe(config_dir / "plugins" / f"{name}.yaml") for name in plugin_names(config_dir)]


def plugin_class(config_dir: Path, name: str) -> type:
    """The class that ``<config_dir>/plugins/<name>.yaml`` names in its ``_target_``."""
    path = config_dir / "plugins" / f"{name}.yaml"
    node = OmegaConf.load(path).get(name)
    if node is None or "_target_" not in node:
        raise HooktrainError(f"{path} must nest its settings under `{name}:` with a `_target_`")
    target = node._target_
    module_name, _, class_name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise HooktrainError(f"`plugins.{name}._target_`: cannot import {target!r} ({error})") from None


def example_overrides(config_dir: Path, names: list[str]) -> list[str]:
    """``plugins=[...]`` and each plugin's ``example_settings``: what runs them all on the built-in models."""
    overrides = [f"plugins=[{','.join(names)}]"] if names else []
    for name in names:
        overrides += settings_overrides(name, plugin_class(config_dir, name).example_settings)
    return overrides


def settings_overrides(name: str, settings: dict[str, object]) -> list[str]:
    """``++plugins.<name>.<key>=<value>`` for each setting: added where the YAML lacks the key, replaced where it has it."""
    return [f"++plugins.{name}.{key}={value}" for key, value in settings.items()]


def _describe(path: Path) -> PluginInfo:
    name = path.stem
    cls = plugin_class(path.parent.parent, name)
    target = f"{cls.__module__}.{cls.__qualname__}"
    description = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
    parameters = [line.strip() for line in lines[start + 1 :] if line.strip() and not line.strip().startswith("_target_")]
    return PluginInfo(name, target, description, parameters)
