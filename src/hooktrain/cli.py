"""The command line's front door: overrides composed once before Hydra runs, its errors said in one sentence.

Hydra reports a misspelt key or an unknown option in a dozen lines (search path, hints, a link);
``check_command_line`` composes the same config first and turns those failures into one line that
names the override and lists what would have worked.
"""

import difflib
import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hooktrain.registry import check_plugin_overrides, group_options


def check_command_line(args: list[str], config_dir: Path, config_name: str = "train") -> None:
    """Stops with ``error: <one sentence>`` when the overrides in ``args`` do not compose.

    Hydra's own flags (``--help``, ``--cfg``, ``-m``) are left to Hydra; a multirun's sweeps are not composed.
    """
    check_plugin_overrides(args, config_dir)
    for arg in args:
        if arg.startswith(("hydra.run.dir=", "hydra.sweep.dir=")):
            check_creatable(arg.partition("=")[2], arg.partition("=")[0])
    if any(arg.startswith("-") for arg in args):
        return
    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            compose(config_name, overrides=args)
    except (HydraException, OmegaConfBaseException) as error:
        raise SystemExit(f"error: {sentence(error, config_dir, args, config_name)}") from None


def check_creatable(path: str, key: str) -> None:
    """A run directory must be a folder this process can write, or creatable under one."""
    target = Path(path).expanduser().absolute()
    existing = next(parent for parent in (target, *target.parents) if parent.exists())
    if not existing.is_dir():
        raise SystemExit(f"error: `{key}={path}`: {existing} is a file, so no run directory can be made under it; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f"error: `{key}={path}`: {existing} is not writable by this user; choose another path")
    if existing.resolve().is_relative_to("/proc") or existing.resolve().is_relative_to("/sys"):
        raise SystemExit(f"error: `{key}={path}`: {existing} is a kernel file system, not storage; choose another path")


def sentence(error: Exception, config_dir: Path, args: list[str] = (), config_name: str = "train") -> str:
    """One sentence for a composition failure: the override, what is wrong, what would work."""
    text = str(error)
    if isinstance(error, MissingConfigException) and error.options is not None:
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        if found:
            group, option = found.groups()
            return f"`{group}={option}`: there is no {group} {option!r}; choose one of {', '.join(error.options)} (conf/{group}/)"
    unloadable = re.search(r"Could not load '([\w/]+)/([^'/]+)'", text)
    if unloadable and (config_dir / unloadable.group(1)).is_dir():  # an unknown option inside a list, e.g. callbacks=[default,nosuch]
        group, option = unloadable.groups()
        return f"there is no {group} {option!r}; choose among {', '.join(group_options(config_dir, group))} (conf/{group}/)"
    if isinstance(error, OverrideParseException):
        detail = " ".join(line for line in text.splitlines() if not line.startswith("See "))
        return f"cannot read this override: {detail}; the form is key=value, e.g. trainer.max_epochs=5 or plugins=[grad_logger]"
    if isinstance(error, ConfigCompositionException):
        found = re.search(r"Could not override '([^']+)'", text)
        if found:
            others = [arg for arg in args if arg.partition("=")[0].lstrip("+~") != found.group(1)]
            return _unknown_key(found.group(1), config_dir, others, config_name)
    return text.splitlines()[0]


def _unknown_key(key: str, config_dir: Path, others: list[str], config_name: str = "train") -> str:
    """``trainer.max_epoch`` is not a setting; did you mean ``trainer.max_epochs``? (the keys as the other overrides make them)"""
    parent, _, name = key.rpartition(".")
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        base = compose(config_name, overrides=others)
    node = OmegaConf.select(base, parent) if parent else base
    siblings = [str(sibling) for sibling in node] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(name, siblings, n=1)
    where = f"`{parent}`" if parent else "the config"
    suggestion = f"did you mean `{parent + '.' if parent else ''}{close[0]}`?" if close else f"its keys are {', '.join(siblings)}"
    return f"`{key}` is not a setting of {where}; {suggestion} (to add a new key on purpose: +{key}=...)"
