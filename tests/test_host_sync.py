"""Plugins never copy to the host on idle steps, and make one batched copy on logging steps."""

import traceback
from collections import Counter
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from hooktrain import PluginRunner
from hooktrain.data import SyntheticDataModule
from hooktrain.models import MLP
from hooktrain.task import ClassifierTask
from plugins.grad_logger import GradLogger

HOOKTRAIN_CODE = ("hooktrain/runner.py", "hooktrain/plugin.py", "hooktrain/stats.py", f"{Path('plugins')}/")


class SyncCounter(Callback):
    """Counts Tensor.item/tolist/cpu calls made from plugin or runner code, per optimizer step."""

    def __init__(self, monkeypatch):
        self.calls: Counter[tuple[int, str]] = Counter()
        self.step = 0
        for name in ("item", "tolist", "cpu"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def counted(tensor, *args, **kwargs):
            if any(part in frame.filename for frame in traceback.extract_stack() for part in HOOKTRAIN_CODE):
                self.calls[(self.step, name)] += 1
            return original(tensor, *args, **kwargs)

        return counted

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step


@pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval")
def test_no_host_copy_on_idle_steps_and_one_on_active_steps(monkeypatch, tmp_path):
    counter = SyncCounter(monkeypatch)
    plugins = [GradLogger(name="grad_logger", every_n_steps=3)]
    task = ClassifierTask(MLP(in_features=16, hidden_sizes=[8], num_classes=3), optimizer=partial(torch.optim.SGD, lr=0.1))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=7, logger=pl.loggers.TensorBoardLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1000,
        callbacks=[counter, PluginRunner(plugins)],
    )
    trainer.fit(task, datamodule=SyntheticDataModule(num_samples=128, num_classes=3, image_size=4, batch_size=8))
    steps_with_copies = sorted({step for step, _ in counter.calls})
    assert steps_with_copies == [0, 3, 6]  # the active steps only
    for step in steps_with_copies:
        assert counter.calls[(step, "cpu")] == 1 and counter.calls[(step, "item")] == 0  # one batched copy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval")
def test_idle_steps_on_cuda_make_no_synchronizing_call():
    class SyncDebugOnIdleSteps(Callback):
        """Errors on any synchronizing CUDA call between batch start and batch end of idle steps."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step % 4 != 0:
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode(0)

    task = ClassifierTask(MLP(in_features=16, hidden_sizes=[32], num_classes=3), optimizer=partial(torch.optim.SGD, lr=0.1))
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1000,
        callbacks=[SyncDebugOnIdleSteps(), PluginRunner([GradLogger(name="grad_logger", every_n_steps=4)])],
    )
    try:
        trainer.fit(task, datamodule=SyntheticDataModule(num_samples=256, num_classes=3, image_size=4, batch_size=8))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.global_step == 12
