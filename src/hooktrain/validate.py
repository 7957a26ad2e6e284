"""Checking a config node against the signature of its ``_target_``, before anything is built.

Every node a run builds (model, data, task, optimizer, plugins, callbacks, logger, trainer) names
its class or function in ``_target_``; that callable's signature and type annotations are its
schema. pydantic checks each value against its annotation, so ``model.hidden_sizes=abc``,
``trainer.max_epochs=abc`` or ``trainer.precision=17`` stop with one sentence naming the field, the
value and what is allowed, instead of a traceback from deep inside PyTorch or Lightning.
"""

import difflib
import functools
import inspect
import typing
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from pydantic import ConfigDict, TypeAdapter, ValidationError

from hooktrain.errors import HooktrainError


def check_arguments(node: DictConfig, field: str) -> None:
    """Each key of ``node`` is an argument of its ``_target_``, of the annotated type; nested targets too.

    Raises:
        HooktrainError: ``model.hidden_sizes: 'str' instances are not allowed as a Sequence value; got 'abc'``.
    """
    try:
        target = get_object(node._target_)
    except Exception:
        return  # build() names an unimportable target with the import error
    parameters, hints, open_ended = _signature(target)
    for key in node:
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if key not in parameters and not open_ended:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f"; did you mean `{field}.{close[0]}`?" if close else f"; it takes: {', '.join(parameters)}" + _replaced_target_hint(field, node, parameters)
            raise HooktrainError(f"`{field}.{key}` is not an argument of {node._target_}{hint}")
        try:
            value = node[key]
        except Exception:
            continue  # an interpolation only Hydra's own run resolves
        if isinstance(value, DictConfig) and "_target_" in value:
            check_arguments(value, f"{field}.{key}")
            continue
        annotation = hints.get(key)
        adapter = _adapter(annotation) if annotation is not None else None
        if adapter is None:
            continue
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        try:
            adapter.validate_python(plain)
        except ValidationError as error:
            raise HooktrainError(f"`{field}.{key}`{_describe(error)}; got {plain!r}") from None


def _replaced_target_hint(field: str, node: DictConfig, parameters: list[str]) -> str:
    """Hydra keeps a group file's keys when ``_target_`` alone is overridden: a class of one's own starts from an empty node.

    Said when several keys are foreign to the target, as they are after ``model._target_=mypackage.MyNet``.
    """
    foreign = [key for key in node if isinstance(key, str) and not key.startswith("_") and key not in parameters]
    if "." in field or len(foreign) < 2:
        return ""
    return (f". A `_target_` set on the command line keeps the keys of the `{field}` config it replaces: start from an empty one "
            f"with `'~{field}' +{field}._target_={node._target_}`, or write conf/{field}/<name>.yaml")


def _signature(target: Any) -> tuple[list[str], dict[str, Any], bool]:
    """Parameter names and annotations of a function, or of a class's ``__init__`` and those it passes ``**kwargs`` to."""
    functions = [cls.__init__ for cls in target.__mro__ if "__init__" in vars(cls)] if inspect.isclass(target) else [target]
    names: list[str] = []
    hints: dict[str, Any] = {}
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return names, hints, True
        names += [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self" and p.name not in names]
        try:
            hints = {**typing.get_type_hints(function), **hints}
        except Exception:
            pass  # unresolvable annotations: names are still checked
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names, hints, False
        if function is object.__init__:
            break
    return names, hints, True


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any) -> TypeAdapter | None:
    """A pydantic validator for ``annotation`` (classes such as ``Tensor`` by ``isinstance``), or None where it has none."""
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:
        return None


def _describe(error: ValidationError) -> str:
    """``must be 64, 32 or 16 or '16-mixed', ...`` from pydantic's errors (one per branch of a Union)."""
    messages = list(dict.fromkeys(detail["msg"] for detail in error.errors()))
    wanted = [message.removeprefix("Input should be ") for message in messages if message.startswith("Input should be ")]
    if len(wanted) == len(messages):
        return " must be " + " or ".join(wanted)
    return ": " + "; ".join(messages)
