"""What the Fabric engine takes from a config written for Lightning's Trainer, and what it refuses, in one sentence each."""

import inspect
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from torch import nn

from hooktrain.engines.lightning import HookCallback
from hooktrain.errors import HooktrainError


def refuse_trainer_only(arguments: dict[str, Any]) -> None:
    """Trainer arguments left at Lightning's defaults pass (the config lists them all); a changed one is refused."""
    defaults = inspect.signature(pl.Trainer.__init__).parameters
    for name, value in arguments.items():
        if name not in defaults:
            raise HooktrainError(f"`{name}` is not an argument of the Lightning Trainer or the Fabric engine")
        if value != defaults[name].default:
            raise HooktrainError(
                f"`{name}`: the Fabric engine (trainer=fabric) does not run this Trainer setting; "
                f"remove it or train with the Trainer engine (trainer=cpu or trainer=gpu)"
            )


def sort_callbacks(callbacks: list[Callback], enable_progress_bar: bool | None) -> tuple[Any, list[ModelCheckpoint], Any, int | None]:
    """The callbacks this loop implements itself: the plugins' HookCallback, checkpoints, the learning-rate monitor, a progress bar."""
    hooks, checkpoints, lr_monitor, refresh = None, [], None, None
    for callback in callbacks:
        if isinstance(callback, HookCallback):
            hooks = callback
        elif isinstance(callback, ModelCheckpoint):
            if callback.save_top_k != 1 or callback.save_last or "{" in (callback.filename or "{") or callback._every_n_train_steps:
                raise HooktrainError(
                    "`callbacks`: the Fabric engine saves a ModelCheckpoint with save_top_k=1 and a plain filename (dirpath/filename.ckpt) "
                    "at each epoch's end; simplify it or train with the Trainer engine (trainer=cpu)"
                )
            checkpoints.append(callback)
        elif isinstance(callback, LearningRateMonitor):
            if callback.logging_interval == "step":
                raise HooktrainError(
                    "`callbacks`: the Fabric engine logs the learning rate once per epoch (its schedulers step per epoch); "
                    "set the LearningRateMonitor's logging_interval to epoch"
                )
            lr_monitor = callback
        elif isinstance(callback, ProgressBar):
            refresh = max(int(getattr(callback, "refresh_rate", 1) or 1), 1)
        else:
            raise HooktrainError(
                f"`callbacks`: the Fabric engine runs no Lightning callback such as {type(callback).__name__} (it implements "
                "ModelCheckpoint, LearningRateMonitor and the progress bar itself); remove it or train with trainer=cpu"
            )
    return hooks, checkpoints, lr_monitor, refresh if enable_progress_bar is not False else None


def check_task(task: Any) -> None:
    if not (isinstance(getattr(task, "model", None), nn.Module) and callable(getattr(task, "loss", None))):
        raise HooktrainError(
            f"`task`: the Fabric engine trains a task with a `model` and a `loss(logits, targets)` (hooktrain.task.ClassifierTask "
            f"or a subclass), got {type(task).__name__}; train other LightningModules with trainer=cpu"
        )


def optimizer_and_scheduler(configured: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and epoch scheduler of ``configure_optimizers``: an optimizer, or ``{"optimizer", "lr_scheduler"}``."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured, None
    if isinstance(configured, dict) and isinstance(configured.get("optimizer"), torch.optim.Optimizer):
        scheduler = configured.get("lr_scheduler")
        if isinstance(scheduler, dict):
            if scheduler.get("interval", "epoch") != "epoch":
                raise HooktrainError("`task.scheduler`: the Fabric engine steps schedulers once per epoch")
            scheduler = scheduler["scheduler"]
        return configured["optimizer"], scheduler
    raise HooktrainError("`task`: the Fabric engine needs configure_optimizers to return one optimizer, or a dict with one and its scheduler")


def limit(setting: int | float | None, available: int) -> int:
    """Lightning's ``limit_*_batches``: a count (int) or a share of the batches (float); None means all."""
    if setting is None:
        return available
    if isinstance(setting, float):
        return int(available * setting)
    return min(setting, available)


def set_torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
    """What the Trainer sets for ``deterministic`` and ``benchmark``."""
    if deterministic is not None:
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
