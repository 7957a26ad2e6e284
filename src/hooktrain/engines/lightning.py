"""The Trainer engine: a Lightning Callback that tells a HookSession the step and the phase."""

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

from hooktrain.plugin import HookPlugin
from hooktrain.session import HookSession, check_plugins
from hooktrain.writers import writers_for


# The run's story at the top of the Custom Scalars tab (the Scalars tab sorts its groups by name, plugins before train/).
RUN_CHARTS = {
    "loss": ["Multiline", [r"^(train|val|test)/loss"]],
    "accuracy": ["Multiline", [r"^(train|val|test)/acc"]],
    "learning rate": ["Multiline", [r"^lr-"]],
}


class HookCallback(Callback):
    """Runs plugins inside Lightning's Trainer through a :class:`HookSession` on the task's model.

    The session hooks ``pl_module.model`` (the task's network) or, without one, the LightningModule
    itself; its state is registered as ``pl_module.plugin_state``, so Lightning's checkpoints save
    and restore it with any LightningModule. Statistics go to the Trainer's loggers.

    Args:
        plugins: the plugins, with distinct names.
        compiled: the model runs under ``torch.compile`` (hooks attached once, gated per step).
        model: the module to hook, when known before the fit: the session is set up at once, so a
            selection or a plugin's setup fails before training starts. Otherwise at ``setup``.

    Raises:
        HooktrainError: two plugins share a name, a plugin cannot run compiled, a selection matches
            nothing, a plugin refuses its modules.
    """

    def __init__(self, plugins: Sequence[HookPlugin], compiled: bool = False, model: nn.Module | None = None) -> None:
        check_plugins(plugins, compiled)
        self.plugins, self.compiled = list(plugins), compiled
        self.failed = False  # the fit raised: no last pictures at teardown
        self.session = HookSession(model, self.plugins, compiled=compiled).setup() if model is not None else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.attach_to(pl_module, trainer.loggers)

    def attach_to(self, pl_module: pl.LightningModule, loggers: list[Any]) -> HookSession:
        """Registers the plugins' state on the LightningModule (before a checkpoint is restored into it) and the
        loggers (Lightning's or Fabric's) as the session's writers; the Fabric engine calls it too."""
        if self.session is None:
            model = pl_module.model if isinstance(getattr(pl_module, "model", None), nn.Module) else pl_module
            self.session = HookSession(model, self.plugins, compiled=self.compiled).setup()
        if getattr(pl_module, "plugin_state", None) is not self.session.state:
            pl_module.plugin_state = self.session.state
            self.session.writers = writers_for(loggers)
            self.session.run_charts = RUN_CHARTS
        return self.session

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.info.total_steps = trainer.estimated_stepping_batches

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.session.info.scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.session.info.targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        self.session.start_step(trainer.global_step)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.session.before_optimizer_step()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.session.info.step:  # else gradient accumulation: the optimizer step is not done
            self.session.finish_step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.draw()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.start_phase("validate")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.finish_phase(write=not trainer.sanity_checking)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.start_phase("test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.finish_phase()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.start_phase("predict")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.finish_phase()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.failed = True
        if self.session is not None:
            self.session.close(draw=False)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.session is not None:
            self.session.close(draw=not self.failed)
            self.session.info.scaler = None
