"""The one exception type for user mistakes, and the checks that raise it."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real


class HooktrainError(Exception):
    """A user mistake: the message names the field, the value received and what is allowed.

    The command line prints it as one sentence, without a traceback, and stops before training.
    """


class PluginHookError(RuntimeError):
    """A plugin raised inside a hook; the message names the plugin, the hook kind and the module."""


def check_positive_int(field: str, value: object) -> int:
    """Returns ``value`` if it is an integer >= 1, else raises naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HooktrainError(f"`{field}` must be an integer >= 1, got {value!r}")
    return value


def check_in_range(field: str, value: object, low: float, high: float) -> float:
    """Returns ``value`` if it is a number in ``[low, high)``, else raises naming ``field``."""
    if not (_is_number(value) and low <= value < high):
        raise HooktrainError(f"`{field}` must be a number in [{low}, {high}), got {value!r}")
    return float(value)


def check_positive(field: str, value: object) -> float:
    """Returns ``value`` if it is a number > 0, else raises naming ``field``."""
    if not (_is_number(value) and value > 0):
        raise HooktrainError(f"`{field}` must be a number > 0, got {value!r}")
    return float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


class NonFiniteError(HooktrainError):
    """Training produced NaN or inf; the message names the step and where it appeared first."""


@contextmanager
def in_one_sentence() -> Iterator[None]:
    """Around a command: a user mistake or a plugin's failure ends it with ``error: <sentence>`` and exit status 1.

    ``HYDRA_FULL_ERROR=1`` shows the whole traceback instead, as it does for Hydra's own errors.
    """
    try:
        yield
    except (HooktrainError, PluginHookError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {error}") from None
