"""Plugins never copy to the host on idle steps, and make one batched copy on logging steps."""

import traceback
from collections import Counter
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from hooktrain import HookCallback
from hooktrain.data import SyntheticDataModule
from hooktrain.models import MLP
from hooktrain.run import build_run
from hooktrain.session import HookSession
from hooktrain.task import ClassifierTask
from plugins.grad_logger import GradLogger

from conftest import ON_CPU_AND_CUDA, every_plugin

HOOKTRAIN_CODE = ("hooktrain/session.py", "hooktrain/writers.py", "hooktrain/engines/", "hooktrain/plugin.py", "hooktrain/stats.py", f"{Path('plugins')}/")


class SyncCounter(Callback):
    """Counts Tensor.item/tolist/cpu calls made from plugin or session code, per optimizer step."""

    def __init__(self, monkeypatch):
        self.calls: Counter[tuple[int | None, str]] = Counter()
        self.step: int | None = 0  # None from the epoch's end (drawing, teardown) to the next batch's start
        self.drawing = Counter()  # copies between steps made while drawing pictures (a few times a fit)
        for name in ("item", "tolist", "cpu"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def counted(tensor, *args, **kwargs):
            stack = traceback.extract_stack()
            if any(part in frame.filename for frame in stack for part in HOOKTRAIN_CODE):
                self.calls[(self.step, name)] += 1
                if self.step is None and any(frame.name == "draw" for frame in stack):
                    self.drawing[name] += 1
            return original(tensor, *args, **kwargs)

        return counted

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):  # before the session's callback: it draws at the epoch's end
        self.step = None


@pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval")
def test_no_host_copy_on_idle_steps_and_one_on_active_steps(monkeypatch, tmp_path):
    counter = SyncCounter(monkeypatch)
    plugins = [GradLogger(name="grad_logger", every_n_steps=3)]
    task = ClassifierTask(MLP(in_features=16, hidden_sizes=[8], num_classes=3), optimizer=partial(torch.optim.SGD, lr=0.1))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=7, logger=pl.loggers.TensorBoardLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1000,
        callbacks=[counter, HookCallback(plugins)],
    )
    trainer.fit(task, datamodule=SyntheticDataModule(num_samples=128, num_classes=3, image_size=4, batch_size=8))
    steps_with_copies = sorted({step for step, _ in counter.calls if step is not None})
    assert steps_with_copies == [0, 3, 6]  # the active steps only
    for step in steps_with_copies:
        assert counter.calls[(step, "cpu")] == 1 and counter.calls[(step, "item")] == 0  # one batched copy
    between_steps = {name: count for (step, name), count in counter.calls.items() if step is None}
    assert between_steps == counter.drawing and counter.drawing["cpu"] > 0  # only the pictures drawn when the fit ends


def sync_debug(mode: str | int) -> None:
    """``torch.cuda.set_sync_debug_mode``; nothing on a machine without CUDA, where the tests below still check their run."""
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(mode)


class SyncDebugOn(Callback):
    """First callback: from each idle step's batch start, any synchronizing CUDA call raises."""

    def __init__(self, active_every: int) -> None:
        self.active_every = active_every

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step % self.active_every != 0:
            sync_debug("error")


class SyncDebugOff(Callback):
    """Last callback: the check ends with the step's batch end (after every other callback's)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync_debug(0)


def every_plugin_cadenced(make_cfg, every: int, *overrides: str):
    """The real config, 13 training steps, with every plugin (and the settings each needs) active each ``every`` steps,
    but nan_guard and grad_clip, which act on every step by default."""
    return make_cfg(
        *overrides, f"trainer.log_every_n_steps={every}", "trainer.limit_train_batches=13", *every_plugin(every, every),
        "++plugins.nan_guard.every_n_steps=1", "++plugins.grad_clip.every_n_steps=1",
    )


# On the CPU the same run, unchecked: CI keeps the test's set-up working. 16-mixed: GradScaler itself reads found_inf every step.
@pytest.mark.parametrize("device", ON_CPU_AND_CUDA)
def test_idle_steps_of_the_main_job_on_cuda_make_no_synchronizing_call(make_cfg, device):
    """Steps 1-3, 5-7, ... (all plugins idle but nan_guard and grad_clip) run under ``set_sync_debug_mode("error")``,
    from each batch's start to its end, Lightning's own per-step work included."""
    every = 4
    run = build_run(every_plugin_cadenced(make_cfg, every, *device))
    run.trainer.callbacks.insert(0, SyncDebugOn(every))
    run.trainer.callbacks.append(SyncDebugOff())
    try:
        run.trainer.fit(run.task, datamodule=run.datamodule)
    finally:
        sync_debug(0)
    assert run.trainer.global_step == 13
    assert run.task.plugin_state.nan_guard.checked_steps.item() == 13


@pytest.mark.parametrize("device", ON_CPU_AND_CUDA)
def test_idle_steps_of_the_fabric_engine_on_cuda_make_no_synchronizing_call(make_cfg, monkeypatch, device):
    """The same on ``trainer=fabric``: from the session's step start (the batch is on the GPU) through forward, backward,
    clipping and the optimizer to its step's end, idle steps run under ``set_sync_debug_mode("error")``."""
    every = 4
    start_step, finish_step = HookSession.start_step, HookSession.finish_step

    def checked_start(session, step):
        if step % every:
            sync_debug("error")
        start_step(session, step)

    def checked_finish(session):
        try:
            finish_step(session)
        finally:
            sync_debug(0)

    monkeypatch.setattr(HookSession, "start_step", checked_start)
    monkeypatch.setattr(HookSession, "finish_step", checked_finish)
    run = build_run(every_plugin_cadenced(make_cfg, every, "trainer=fabric", *device, "trainer.gradient_clip_val=1.0"))
    try:
        run.trainer.fit(run.task, datamodule=run.datamodule)
    finally:
        sync_debug(0)
    assert run.trainer.global_step == 13
    assert run.task.plugin_state.nan_guard.checked_steps.item() == 13
