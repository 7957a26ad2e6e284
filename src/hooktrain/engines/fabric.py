"""The Fabric engine (``trainer=fabric``): the main job as a plain loop on Lightning Fabric, at the raw loop's speed.

The same config builds it: task, model, data, plugins, logger and the Trainer's own argument names
(``trainer.max_epochs``, ``trainer.gradient_clip_val``, ``trainer.precision`` ...). It writes what the
Trainer engine writes: the same metrics, TensorBoard events, ``checkpoints/last.ckpt`` and ``best.ckpt``
(``state_dict`` with ``model.*`` and ``plugin_state.*``) and ``model.pt``. What it leaves out is the
Trainer's per-step machinery: every callback hook, loop objects, result collections.
"""

import logging
import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from lightning.fabric.strategies import SingleDeviceStrategy
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from tqdm import tqdm

from hooktrain.engines.trainer_settings import check_task, limit, optimizer_and_scheduler, refuse_trainer_only, set_torch_flags, sort_callbacks
from hooktrain.errors import HooktrainError, NonFiniteError
from hooktrain.metrics import EpochAccuracy
from hooktrain.session import HookSession

log = logging.getLogger(__name__)

DIRECT_PRECISIONS = (Precision, MixedPrecision, HalfPrecision, DoublePrecision)  # all of their work is in the plugin's own methods
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_find_unused_parameters_true")  # gradients whole on every rank


class FabricTrainer:
    """Fits, validates each epoch, checkpoints and tests a :class:`~hooktrain.task.ClassifierTask` with Fabric.

    Takes the Lightning Trainer's arguments of the same name and meaning; a Trainer argument set to
    anything but its default that this loop does not run is refused with one sentence, as is a
    Lightning callback other than ModelCheckpoint, LearningRateMonitor and the progress bar.

    Raises:
        HooktrainError: an unsupported Trainer argument, strategy or callback.
    """

    engine = "fabric"  # the mark its checkpoints carry: run.check_checkpoint refuses them to the Trainer, and the Trainer's to this

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str = "auto",
        devices: list[int] | str | int = "auto",
        num_nodes: int = 1,
        precision: int | str | None = None,
        logger: Any = None,
        callbacks: list[Callback] | None = None,
        plugins: list[Any] | None = None,
        max_epochs: int | None = None,
        max_steps: int = -1,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] | None = None,
        deterministic: bool | Literal["warn"] | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        sync_batchnorm: bool = False,
        default_root_dir: str | Path | None = None,
        **trainer_only: Any,
    ) -> None:
        refuse_trainer_only(trainer_only)
        if strategy not in STRATEGIES:
            raise HooktrainError(
                f"`strategy`: the Fabric engine runs {', '.join(STRATEGIES)}, got {strategy!r}; "
                "use the Trainer (trainer=cpu or trainer=gpu) for sharded strategies"
            )
        self.hooks, self.checkpoints, self.lr_monitor, self.progress_refresh = sort_callbacks(callbacks or [], enable_progress_bar)
        if enable_checkpointing is False:
            self.checkpoints = []
        loggers = [] if logger is None or logger is False else list(logger) if isinstance(logger, (list, tuple)) else [logger]
        self.fabric = Fabric(
            accelerator=accelerator, strategy=strategy, devices=devices, num_nodes=num_nodes, precision=precision,
            plugins=plugins, loggers=loggers,
        )
        self.max_epochs = 1000 if max_epochs is None and max_steps == -1 else max_epochs  # Lightning's default
        self.max_steps = max_steps
        self.limits = {"train": limit_train_batches, "val": limit_val_batches, "test": limit_test_batches}
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        self.enable_model_summary = enable_model_summary is not False
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm or "norm"
        self.inference_mode, self.use_distributed_sampler, self.sync_batchnorm = inference_mode, use_distributed_sampler, sync_batchnorm
        set_torch_flags(deterministic, benchmark)
        self.global_step = 0
        self.current_epoch = 0
        self._launched = False
        self._model: Any = None  # the task as Fabric set it up (on its device, wrapped for DDP), kept from fit to test
        self._bar: tqdm | None = None  # the fit's progress bar, in optimizer steps

    # What run.py reads, named as on the Trainer.

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    @property
    def loggers(self) -> list[Any]:
        return self.fabric.loggers

    @property
    def checkpoint_callbacks(self) -> list[ModelCheckpoint]:
        return self.checkpoints

    # The run.

    def fit(self, task: pl.LightningModule, datamodule: pl.LightningDataModule, ckpt_path: str | None = None) -> None:
        """Trains for ``max_epochs`` (or ``max_steps``), validating each ``check_val_every_n_epoch`` and saving the checkpoints
        at each epoch's end; ``ckpt_path`` resumes a checkpoint this engine wrote, from the epoch after it."""
        check_task(task)
        self._launch()
        datamodule.setup("fit")
        session = self._session(task)
        if self.sync_batchnorm:
            task.model = nn.SyncBatchNorm.convert_sync_batchnorm(task.model)
        optimizer, scheduler = optimizer_and_scheduler(task.configure_optimizers())
        model, optimizer = self.fabric.setup(task, optimizer)
        self._model = model
        train_loader, val_loader = self._loaders(datamodule.train_dataloader(), datamodule.val_dataloader())
        resumed = self._restore(ckpt_path, model, optimizer, scheduler) if ckpt_path else None
        if self.enable_model_summary and self.is_global_zero:
            log.info("\n%s", pl.utilities.model_summary.summarize(task))
        train_batches = limit(self.limits["train"], len(train_loader))
        steps_per_epoch = math.ceil(train_batches / self.accumulate_grad_batches)
        total_steps = min(self.max_steps if self.max_steps >= 0 else math.inf, (self.max_epochs or math.inf) * steps_per_epoch)
        if session is not None:
            session.info.total_steps = total_steps
            session.info.scaler = getattr(self.fabric.strategy.precision, "scaler", None)
        val_batches = limit(self.limits["val"], len(val_loader))
        if self.num_sanity_val_steps and val_batches:
            self._evaluate(model, task, val_loader, "validate", min(self.num_sanity_val_steps, val_batches), write=False)
        if resumed is not None:
            task.on_load_checkpoint(resumed)  # the random state last: the sanity check's loader drew a seed from it
        self._bar = self._progress_bar(total_steps)
        try:
            while not self._done():
                if self.lr_monitor is not None:
                    self._log(_learning_rates(optimizer), step=self.global_step)
                train_metrics = self._train_epoch(model, task, optimizer, train_loader, train_batches)
                last_step = max(self.global_step - 1, 0)  # epoch metrics at the epoch's last step, where the Trainer puts them
                self._log(train_metrics, step=last_step)
                metrics = dict(train_metrics)
                if val_batches and self.check_val_every_n_epoch and (self.current_epoch + 1) % self.check_val_every_n_epoch == 0:
                    val_metrics = self._evaluate(model, task, val_loader, "validate", val_batches)
                    self._log(val_metrics, step=last_step)
                    metrics.update(val_metrics)
                if scheduler is not None:
                    scheduler.step()
                self.current_epoch += 1
                self._save_checkpoints(metrics, model, optimizer, scheduler, task)
                if session is not None:
                    session.draw()
        except BaseException:
            if session is not None:
                session.close(draw=False)
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if session is not None:
            session.close()
        for logger in self.loggers:
            logger.save()

    def test(self, task: pl.LightningModule, datamodule: pl.LightningDataModule, ckpt_path: str | None = None) -> list[dict[str, float]]:
        """Tests the model as it is (``ckpt_path`` must be None) and logs ``test/loss`` and ``test/acc`` at the last step."""
        if ckpt_path is not None:
            raise HooktrainError("the Fabric engine tests the model it holds; load a checkpoint into it first")
        check_task(task)
        self._launch()
        datamodule.setup("test")
        session = self._session(task)
        model = self._model if self._model is not None and self._model.module is task else self.fabric.setup_module(task)
        loader = self._loaders(datamodule.test_dataloader())
        try:
            metrics = self._evaluate(model, task, loader, "test", limit(self.limits["test"], len(loader)))
        finally:
            if session is not None:
                session.close()
        self._log(metrics, step=self.global_step)
        if self.is_global_zero:
            print("\n".join(f"{name:>12}  {value:.4f}" for name, value in metrics.items()))
        for logger in self.loggers:
            logger.finalize("success")
        return [metrics]

    # Inside.

    def _launch(self) -> None:
        """Starts the other processes of a DDP run (they run the same command; ``python train.py ...`` or torchrun) once."""
        if not self._launched:
            self.fabric.launch()
            self._launched = True

    def _loaders(self, *loaders: Any) -> Any:
        """Fabric's loaders: a DistributedSampler under DDP, batches moved to the accelerator (on the CPU there is nothing to move)."""
        on_cpu = self.fabric.device.type == "cpu"
        return self.fabric.setup_dataloaders(*loaders, use_distributed_sampler=self.use_distributed_sampler, move_to_device=not on_cpu)

    def _direct(self) -> bool:
        """One process: Fabric's module, backward and optimizer wrappers add only bookkeeping around the precision
        plugin (a backward hook on every output, checks for strategies that need ``fabric.backward``, a no-op sync
        control), 0.1-0.3 ms a step under bf16-mixed; the loop calls the precision plugin itself."""
        return isinstance(self.fabric.strategy, SingleDeviceStrategy) and type(self.fabric.strategy.precision) in DIRECT_PRECISIONS

    def _session(self, task: pl.LightningModule) -> HookSession | None:
        """The plugins' HookSession, its state registered on the task (saved in ``state_dict``) and the loggers as its writers."""
        return self.hooks.attach_to(task, self.loggers) if self.hooks is not None else None

    def _done(self) -> bool:
        return (self.max_steps >= 0 and self.global_step >= self.max_steps) or (
            self.max_epochs is not None and self.current_epoch >= self.max_epochs
        )

    def _train_epoch(self, model: nn.Module, task: Any, optimizer: Any, loader: Any, batches: int) -> dict[str, float]:
        """One epoch: forward, backward, the session's step boundaries, clipping, the optimizer; the loss read on logging steps only."""
        fabric, session, accumulate = self.fabric, self.hooks.session if self.hooks else None, self.accumulate_grad_batches
        direct, precision, module = self._direct(), fabric.strategy.precision, model.module
        step_optimizer = optimizer.optimizer if direct else optimizer
        scaler = getattr(precision, "scaler", None)  # 16-mixed: unscaled for plugins and clipping alike
        scaler = scaler if scaler is not None and scaler.is_enabled() else None
        model.train()
        loader._num_iter_calls = self.current_epoch  # Fabric seeds the sampler's epoch with this count: a resumed run draws epoch N's order
        epoch = EpochAccuracy(fabric.device)
        bar = self._bar
        if bar is not None:
            bar.set_description_str(f"Epoch {self.current_epoch}", refresh=False)
        for batch_idx, (x, y) in enumerate(loader):
            if batch_idx >= batches or (self.max_steps >= 0 and self.global_step >= self.max_steps):
                break
            steps_now = (batch_idx + 1) % accumulate == 0 or batch_idx + 1 == batches
            if session is not None:
                session.info.targets = y
                session.start_step(self.global_step)
            if direct:  # what the wrappers below do on one device, their bookkeeping left out
                with precision.forward_context():
                    logits = precision.convert_output(module(precision.convert_input(x)))
                    loss = task.loss(logits, y)
                precision.backward(loss / accumulate if accumulate > 1 else loss, module)
            else:
                with fabric.no_backward_sync(model, enabled=not steps_now), fabric.autocast():
                    logits = model(x)
                    loss = task.loss(logits, y)
                fabric.backward(loss / accumulate if accumulate > 1 else loss)
            epoch.add(loss, logits, y)
            if not steps_now:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer.optimizer)  # plugins and clipping see true gradients
            if session is not None:
                session.before_optimizer_step()
            if self.gradient_clip_val:
                self._clip(task)
            if direct:
                precision.optimizer_step(step_optimizer)  # under a GradScaler: its step and update
            else:
                step_optimizer.step()
            step_optimizer.zero_grad(set_to_none=True)
            step, self.global_step = self.global_step, self.global_step + 1
            if session is not None:
                session.finish_step()
            if step % self.log_every_n_steps == 0:
                self._log_step(step, loss, logits, y, bar)
            if bar is not None and self.global_step % self.progress_refresh == 0:
                bar.update(self.global_step - bar.n)
        loss_sum, correct, count = _all_sum(fabric, epoch.totals(), epoch.count)
        return {"train/loss": loss_sum / max(count, 1), "train/acc": correct / max(count, 1)}

    def _log_step(self, step: int, loss: Tensor, logits: Tensor, y: Tensor, bar: Any) -> None:
        """The training loss and accuracy of a logging step: the one host sync of the step, as in the Trainer engine."""
        loss_value, accuracy = torch.stack([loss.detach(), (logits.argmax(dim=1) == y).float().mean()]).tolist()
        if not math.isfinite(loss_value):
            raise NonFiniteError(
                f"the training loss is {loss_value} at step {step}; plugins=[nan_guard] names the first "
                "module that went non-finite; a lower task.optimizer.lr or plugins=[grad_clip] often helps"
            )
        self._log({"train/loss": loss_value, "train/acc": accuracy}, step=step)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)

    def _clip(self, task: Any) -> None:
        parameters = [p for p in task.parameters() if p.grad is not None]
        if self.gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, self.gradient_clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, self.gradient_clip_val, foreach=True)

    def _evaluate(self, model: nn.Module, task: Any, loader: Any, phase: str, batches: int, write: bool = True) -> dict[str, float]:
        """Loss and accuracy over ``batches`` batches (and every process), the plugins given ``phase`` running on each batch."""
        session = self.hooks.session if self.hooks else None
        stage = "val" if phase == "validate" else phase
        if session is not None:
            session.start_phase(phase)
        totals = EpochAccuracy(self.fabric.device)
        model.eval()
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            for batch_idx, (x, y) in enumerate(loader):
                if batch_idx >= batches:
                    break
                with self.fabric.autocast():
                    logits = model(x)
                    loss = task.loss(logits, y)
                totals.add(loss, logits, y)
        model.train()
        if session is not None:
            session.finish_phase(write=write)
        loss_sum, correct, count = _all_sum(self.fabric, totals.totals(), totals.count)
        return {f"{stage}/loss": loss_sum / max(count, 1), f"{stage}/acc": correct / max(count, 1)}

    def _progress_bar(self, total_steps: float) -> tqdm | None:
        """One bar for the whole fit, in optimizer steps, its description the epoch (on the first process, unless turned
        off): the time left is the fit's, and an epoch's end draws nothing (a bar per epoch took 0.2 ms to draw)."""
        if self.progress_refresh is None or not self.is_global_zero:
            return None
        total = None if math.isinf(total_steps) else int(total_steps)
        return tqdm(total=total, initial=self.global_step, desc=f"Epoch {self.current_epoch}", unit="step", leave=False, dynamic_ncols=True)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        """Host numbers to every logger, as ``Fabric.log_dict`` does minus its search for tensors to convert."""
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    # Checkpoints.

    def _save_checkpoints(self, metrics: dict[str, float], model: nn.Module, optimizer: Any, scheduler: Any, task: Any) -> None:
        """Each ModelCheckpoint of the config: one without ``monitor`` every epoch, one with it when the metric improved."""
        due = []
        for callback in self.checkpoints:
            if callback.monitor is not None:
                value = metrics.get(callback.monitor)
                best = callback.best_model_score
                if value is None or (best is not None and not (value > best if callback.mode == "max" else value < best)):
                    continue
                callback.best_model_score = torch.tensor(value)
            due.append(callback)
        if not due:
            return
        state = {
            "engine": self.engine, "epoch": self.current_epoch, "global_step": self.global_step, "state_dict": model,
            "optimizer": optimizer, "lr_schedulers": [scheduler.state_dict()] if scheduler is not None else [],
            "best_scores": {c.filename: c.best_model_score for c in self.checkpoints if c.best_model_score is not None},
        }
        task.on_save_checkpoint(state)  # the random state, as the Trainer engine saves it
        for callback in due:
            path = _path(callback)
            self.fabric.save(path, state)
            callback.best_model_path = callback.last_model_path = str(path)

    def _restore(self, ckpt_path: str, model: nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """Loads model, plugin state, optimizer, schedule and position from a checkpoint of this engine; returns the rest."""
        remainder = self.fabric.load(ckpt_path, {"state_dict": model, "optimizer": optimizer})
        if scheduler is not None and remainder.get("lr_schedulers"):
            scheduler.load_state_dict(remainder["lr_schedulers"][0])
        self.current_epoch, self.global_step = remainder["epoch"], remainder["global_step"]
        for callback in self.checkpoints:
            callback.best_model_score = remainder.get("best_scores", {}).get(callback.filename)
        return remainder


def _all_sum(fabric: Fabric, sums: Tensor, count: int) -> list[float]:
    """Sums and the sample count over every process, read in one copy to the host."""
    totals = torch.cat([sums, sums.new_tensor([count])])
    return (fabric.all_reduce(totals, reduce_op="sum") if fabric.world_size > 1 else totals).tolist()


def _path(callback: ModelCheckpoint) -> Path:
    return Path(callback.dirpath) / f"{callback.filename}{callback.FILE_EXTENSION}"


def _learning_rates(optimizer: Any) -> dict[str, float]:
    """Named as LearningRateMonitor names them: ``lr-Adam``; with several parameter groups ``lr-Adam/pg1``, ``lr-Adam/pg2``."""
    name = f"lr-{type(optimizer.optimizer if hasattr(optimizer, 'optimizer') else optimizer).__name__}"
    groups = optimizer.param_groups
    return {name if len(groups) == 1 else f"{name}/pg{i + 1}": group["lr"] for i, group in enumerate(groups)}
