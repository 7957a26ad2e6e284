"""ClassifierTask: the LightningModule that trains any classifier nn.Module."""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from hooktrain.errors import NonFiniteError
from hooktrain.metrics import EpochAccuracy
from hooktrain.param_groups import check_group_settings, parameter_groups

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class ClassifierTask(pl.LightningModule):
    """Cross-entropy training with accuracy on train/val/test; the network is kept as ``self.model``.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to ``(B, num_classes)`` logits.
        optimizer: builds the optimizer from parameters (a ``_partial_`` config such as Adam).
        scheduler: builds a learning-rate scheduler from the optimizer, stepped once per epoch; optional.
        param_groups: per-layer optimizer settings, e.g. ``[{targets: [features.*], lr: 2e-4}]``
            (:func:`hooktrain.param_groups.parameter_groups`).
    """

    metric_names = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")  # what a callback may monitor

    def __init__(
        self, model: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
        param_groups: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_groups = OmegaConf.to_container(param_groups, resolve=True) if OmegaConf.is_config(param_groups) else list(param_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The training objective (both engines call it): cross-entropy."""
        return F.cross_entropy(logits, targets)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = self.loss(logits, y)
        # Epoch sums stay on the device, folded in batches; `self.log` every step would cost more than a small model's step.
        self._epoch.add(loss, logits, y)
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self._to_log = (self.global_step, torch.stack([loss.detach(), (logits.argmax(dim=1) == y).float().mean()]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Logs and checks the loss of a logging step, after the callbacks' batch end: a plugin such as
        nan_guard, which names the module that went non-finite, speaks before this coarser check."""
        if self._to_log is None or self.trainer.global_step == self._to_log[0]:
            return  # nothing to log, or gradients still accumulating: the step's last micro-batch logs it, once
        step, values = self._to_log
        self._to_log = None
        loss_value, accuracy = values.tolist()  # the one host sync, on logging steps only
        if not math.isfinite(loss_value):
            raise NonFiniteError(
                f"the training loss is {loss_value} at step {step}; plugins=[nan_guard] names the first "
                "module that went non-finite; a lower task.optimizer.lr or plugins=[grad_clip] often helps"
            )
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({"train/loss": loss_value, "train/acc": accuracy}, step=step)

    def on_train_epoch_start(self) -> None:
        self._epoch = EpochAccuracy(self.device)
        self._to_log: tuple[int, Tensor] | None = None  # (step, [loss, accuracy]) of a logging step, read at its batch end

    def on_train_epoch_end(self) -> None:
        loss_sum, correct = self._epoch.totals() / max(self._epoch.count, 1)
        self.log_dict({"train/loss": loss_sum, "train/acc": correct}, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self.model(x)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        self.log_dict(
            {f"{stage}/loss": self.loss(logits, y), f"{stage}/acc": accuracy},
            prog_bar=True, batch_size=len(y), sync_dist=True,
        )

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(parameter_groups(self.model, self.param_groups))
        check_group_settings(optimizer, self.param_groups)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps torch's random state (dropout, random pruning), so a resumed run draws what a straight one would."""
        checkpoint["hooktrain_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["hooktrain_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores the random state (plugin state that differs between runs is the HookSession's business)."""
        rng = checkpoint.get("hooktrain_rng", {})
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
