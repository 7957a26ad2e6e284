"""The main job: build everything from the config, fit, test, export the model's weights."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hooktrain.build import build, build_plugins
from hooktrain.engines.lightning import HookCallback
from hooktrain.errors import HooktrainError, check_positive, in_one_sentence
from hooktrain.export import AtomicCheckpointIO, save_atomic
from hooktrain.hparams import run_settings, shown_at_first
from hooktrain.init import initialize
from hooktrain.rundir import run_directory
from hooktrain.validate import check_arguments
from hooktrain.writers import TensorBoardWriter, use_fast_event_files

log = logging.getLogger(__name__)

ENGINES = {"trainer": ("the Trainer engine", "trainer=cpu"), "fabric": ("the Fabric engine", "trainer=fabric")}  # what resumes which checkpoint


RETURNED_METRICS = ("test/acc", "test/loss", "val/acc_best")  # what `train` returns, so what a sweeper can optimize


def run(cfg: DictConfig) -> float | None:
    """The command line's entry: trains; a user mistake or a plugin's failure ends it in one sentence, exit status 1.

    Returns:
        The value of ``optimized_metric`` (for a sweeper such as Optuna's), or None when it is not set.
    """
    with in_one_sentence():
        metrics = train(cfg)
        name = cfg.get("optimized_metric")
        return None if name is None else metrics.get(name)


@dataclass
class Run:
    """What a config builds: everything ``train`` fits, tests and exports (and the benchmark times)."""

    trainer: pl.Trainer
    task: pl.LightningModule
    datamodule: pl.LightningDataModule
    hooks: HookCallback | None  # None without plugins


def build_run(cfg: DictConfig) -> Run:
    """Reads top to bottom: data, model, task, plugins, callbacks, logger, trainer; all checked before training.

    Raises:
        HooktrainError: a config value is wrong; the message names the field.
    """
    check_run_settings(cfg)
    check_optimized_metric(cfg.get("optimized_metric"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, "data")
    model, compiled = uncompiled(build(cfg.model, "model"), check_compile(cfg.get("compile", False)))
    initialize(model, cfg.get("init"))
    check_model_takes_data(model, datamodule)
    task = build(cfg.task, "task", model=model)
    check_optimizer(task)
    check_monitored_metrics(cfg.get("callbacks"), task)
    plugins = build_plugins(cfg.get("plugins"))
    callbacks = [build(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items()]
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a progress bar it was told not to show
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    logger = build(cfg.logger, "logger")
    use_fast_event_files()  # the loggers' TensorBoard events too, with or without plugins
    # Set up now, so a plugin refusing its modules stops the run before training. Without plugins, no callback:
    # Lightning would still call it on every step.
    hooks = HookCallback(plugins, compiled=bool(compiled), model=model) if plugins else None
    if hooks:
        hooks.session.info.output_dir = Path(cfg.paths.output_dir)  # for plugins that write files (activation_cache)
        callbacks.append(hooks)
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
    if compiled:  # in place: names and state_dict keys stay the model's own; traced at the first forward, after hooks are in place
        model.compile(**({"backend": compiled} if isinstance(compiled, str) else {}))
    return Run(trainer, task, datamodule, hooks)


def train(cfg: DictConfig) -> dict[str, float]:
    """Builds the run, fits (resuming from ``ckpt_path``), tests the final model and exports it as ``model.pt``.

    Returns:
        The test metrics and the best validation accuracy, e.g. ``{"test/acc": 0.98, "test/loss": 0.07, "val/acc_best": 0.98}``.

    Raises:
        HooktrainError: a config value is wrong; raised before training starts.
    """
    run = build_run(cfg)
    ckpt_path = check_checkpoint(cfg.get("ckpt_path"), run.task.model, cfg.task.get("scheduler"), getattr(run.trainer, "engine", "trainer"))
    output_dir = Path(cfg.paths.output_dir)
    with run_directory(output_dir, resuming_from=ckpt_path):
        return fit_test_export(cfg, run, ckpt_path, output_dir)


def fit_test_export(cfg: DictConfig, run: Run, ckpt_path: str | None, output_dir: Path) -> dict[str, float]:
    """The run itself, once everything is checked and the run directory is this run's."""
    trainer, task = run.trainer, run.task
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    try:
        trainer.fit(task, datamodule=run.datamodule, ckpt_path=ckpt_path)
    except RuntimeError as error:
        if "of BackwardHookFunction is a view" in str(error):  # PyTorch's own words for this case
            raise HooktrainError(
                "a module's output is modified in place (e.g. nn.ReLU(inplace=True) or `x += ...`) after a plugin's "
                "full backward hook saw it; make that operation out of place, or choose other modules with `targets`"
            ) from error
        raise
    # The final model is tested and exported (best.ckpt stays for whoever wants it): with a
    # schedule such as pruning's, the best validation epoch can predate the final sparsity.
    results = trainer.test(task, datamodule=run.datamodule, ckpt_path=None)
    metrics = results[0] if results else {}
    best = log_run_summary(trainer, cfg)
    if best is not None:
        metrics = {**metrics, "val/acc_best": best}

    weights, not_in_weights = run.hooks.session.export_state_dict() if run.hooks else (task.model.state_dict(), [])
    if trainer.is_global_zero:
        save_atomic(weights, output_dir / "model.pt")
        log.info("final model weights (those tested) saved to %s", output_dir / "model.pt")
        if not_in_weights:
            log.warning(
                "model.pt alone does not reproduce the tested model: plugin(s) %s changed its forward computation during the "
                "test in a way weights cannot hold; run it with the same plugins (hooktrain.HookSession) to get the test metrics",
                ", ".join(repr(name) for name in not_in_weights),
            )
    return metrics


def log_run_summary(trainer: pl.Trainer, cfg: DictConfig) -> float | None:
    """The best validation accuracy as one scalar, and TensorBoard's HParams row: the run's settings against
    ``val/acc_best``, ``test/acc`` and ``test/loss`` (the test metrics stay where the test logged them, once).

    Returns:
        The best validation accuracy, where a checkpoint callback monitors ``val/acc``; else None.
    """
    score = next((callback.best_model_score for callback in trainer.checkpoint_callbacks if callback.monitor == "val/acc"), None)
    best = float(score) if score is not None else None
    if not trainer.is_global_zero:
        return best
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    settings = run_settings(cfg, overrides)
    for logger in trainer.loggers:
        if best is not None:
            logger.log_metrics({"val/acc_best": best}, step=trainer.global_step)
        if isinstance(logger, TensorBoardLogger):
            TensorBoardWriter(summary_writer=logger.experiment).write_hparams(
                settings, ["val/acc_best", "test/acc", "test/loss"], shown=shown_at_first(settings, overrides))
        else:
            logger.log_hyperparams(settings)
    return best


def check_compile(value: object) -> bool | str:
    """``compile``: false, true (torch.compile's default backend, inductor) or a backend's name."""
    backends = torch.compiler.list_backends(exclude_tags=())
    if isinstance(value, bool) or value in backends:
        return value
    raise HooktrainError(f"`compile` must be true, false or a torch.compile backend ({', '.join(backends)}), got {value!r}")


def _weight_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Each weight's shape, pruned or not: torch.nn.utils.prune keeps ``weight_orig`` and a ``weight_mask`` beside it."""
    return {key.removesuffix("_orig"): tuple(value.shape) for key, value in state.items() if not key.endswith("_mask")}


def uncompiled(model: nn.Module, compile: bool | str) -> tuple[nn.Module, bool | str]:
    """The model and whether to compile it: a model the config wrapped in ``torch.compile`` is unwrapped and compiled
    in place later (``Module.compile``), so its names and ``model.pt`` keys carry no ``_orig_mod.`` and hooks go in first."""
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module):
        return original, True
    return model, compile


def check_run_settings(cfg: DictConfig) -> None:
    """The trainer's arguments first (other nodes interpolate them: the scheduler's ``T_max``), then the settings no
    signature types: the seed, Lightning's logging interval, CPU processes against cores. A required value (``???``,
    such as data=folder's ``data.root``) must be given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise HooktrainError(f"`{missing[0]}` needs a value, which its config leaves to you (???); add {missing[0]}=... to the command line")
    check_arguments(cfg.trainer, "trainer")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise HooktrainError(f"`seed` must be an integer, got {cfg.seed!r}")
    interval = cfg.trainer.get("log_every_n_steps")
    if interval is not None and (not isinstance(interval, int) or interval < 1):
        raise HooktrainError(f"`trainer.log_every_n_steps` must be an integer >= 1, got {interval!r}")
    devices, cores = cfg.trainer.get("devices"), os.cpu_count() or 1
    if cfg.trainer.get("accelerator") == "cpu" and isinstance(devices, int) and not isinstance(devices, bool) and devices > cores:
        raise HooktrainError(
            f"`trainer.devices`: {devices} CPU processes on a machine with {cores} cores would share them and run slower "
            f"than {cores}; use trainer.devices={cores} or fewer"
        )


def check_optimized_metric(name: object) -> None:
    """``optimized_metric`` must be one of the metrics ``train`` returns, or a sweep would optimize nothing."""
    if name is not None and name not in RETURNED_METRICS:
        raise HooktrainError(f"`optimized_metric` must be one of {', '.join(RETURNED_METRICS)} (or null), got {name!r}")


def check_monitored_metrics(callbacks: DictConfig | None, task: pl.LightningModule) -> None:
    """A callback's ``monitor`` must be a metric the task logs (when the task says which: ``metric_names``)."""
    names = getattr(task, "metric_names", None)
    for name, node in (callbacks or {}).items():
        monitor = node.get("monitor") if isinstance(node, DictConfig) else None
        if names and monitor is not None and monitor not in names:
            raise HooktrainError(f"`callbacks.{name}.monitor`: the task logs no metric {monitor!r}; it logs {', '.join(names)}")


def check_model_takes_data(model: nn.Module, datamodule: pl.LightningDataModule) -> None:
    """One forward pass on two training images, so a shape mismatch fails before training, named."""
    example_input = getattr(datamodule, "example_input", None)
    if example_input is None:
        return
    images = example_input()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images)
    except RuntimeError as error:
        raise HooktrainError(
            f"the model cannot take the data's images of shape {tuple(images.shape[1:])} ({error}); "
            "make the model's input size (e.g. `model.in_features`, `model.image_size`) match the data"
        ) from None
    finally:
        model.train(was_training)
    num_classes = getattr(datamodule, "num_classes", None)
    if num_classes is not None and (logits.ndim != 2 or logits.shape[1] != num_classes):
        raise HooktrainError(
            f"the model outputs shape {tuple(logits.shape[1:])} per sample but the data has {num_classes} classes; "
            f"set the model's `num_classes` to {num_classes}"
        )


def check_optimizer(task: pl.LightningModule) -> None:
    """Builds the optimizer once, so a bad value (a negative learning rate) fails before training."""
    try:
        configured = task.configure_optimizers()
    except (ValueError, TypeError) as error:
        raise HooktrainError(f"`task.optimizer` / `task.scheduler`: {error}") from None
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    for group in getattr(optimizer, "param_groups", []):
        check_positive("task.optimizer.lr", group.get("lr"))


def check_checkpoint(ckpt_path: str | None, model: nn.Module, scheduler: DictConfig | None = None, engine: str = "trainer") -> str | None:
    """A resume checkpoint must exist, be a checkpoint of this engine (``trainer`` or ``fabric``: neither continues the
    other's loop state), hold this model's tensors in the same form (pruned or not), and have the learning-rate schedule
    this config asks for (a resumed run restores the saved one as it is)."""
    if ckpt_path is None or ckpt_path in ("last", "best"):
        return ckpt_path
    if not Path(ckpt_path).is_file():
        raise HooktrainError(f"`ckpt_path`: no checkpoint file at {ckpt_path!r}; give the path of a .ckpt file, e.g. <run dir>/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = checkpoint["state_dict"]
    except Exception as error:  # unpickling refused, truncated file, not a dict: all mean "not a checkpoint"
        raise HooktrainError(
            f"`ckpt_path`: {ckpt_path!r} is not a Lightning checkpoint (torch.load cannot read it: {type(error).__name__}); "
            "give the path of a .ckpt file, e.g. <run dir>/checkpoints/last.ckpt"
        ) from None
    written_by = checkpoint.get("engine", "trainer")  # Lightning's own checkpoints carry no mark
    if written_by != engine:
        name, option = ENGINES.get(written_by, (written_by, "the engine that wrote it"))
        raise HooktrainError(
            f"`ckpt_path`: {ckpt_path!r} was written by {name}, whose loop state this engine cannot continue; "
            f"resume it with {option} (or start from its weights: model.pt)"
        )
    saved_model = {key.removeprefix("model."): value for key, value in saved.items() if key.startswith("model.")}
    own_model = model.state_dict()
    saved_shapes, own_shapes = _weight_shapes(saved_model), _weight_shapes(own_model)
    if saved_shapes != own_shapes:
        differing = sorted(set(saved_shapes.items()) ^ set(own_shapes.items()))[:4]
        raise HooktrainError(
            f"`ckpt_path`: {ckpt_path!r} holds another model (differing tensors: {differing}); "
            "resume with the model config it was trained with"
        )
    if saved_model.keys() != own_model.keys():
        only_saved, only_own = sorted(saved_model.keys() - own_model.keys()), sorted(own_model.keys() - saved_model.keys())
        raise HooktrainError(
            f"`ckpt_path`: {ckpt_path!r} holds the same model in another form (only in the checkpoint: {only_saved[:4]}; "
            f"only in this run: {only_own[:4]}); a plugin that reshapes parameters (pruning keeps weight_orig and "
            "weight_mask) must be configured as it was when the checkpoint was saved"
        )
    check_schedule(checkpoint.get("lr_schedulers") or [], scheduler)
    return ckpt_path


def check_schedule(saved: list[dict], scheduler: DictConfig | None) -> None:
    """Resuming restores the saved scheduler, ``T_max`` included: a config asking for another one is stopped, not ignored."""
    wanted = scheduler.get("T_max") if isinstance(scheduler, DictConfig) else None
    had = saved[0].get("T_max") if saved and isinstance(saved[0], dict) else None
    if wanted is not None and had is not None and wanted != had:
        raise HooktrainError(
            f"`task.scheduler.T_max`: the checkpoint's learning-rate schedule ends at epoch {had} and Lightning restores it "
            f"as saved, so this run's T_max={wanted} (it follows trainer.max_epochs) would not apply; resume with "
            f"trainer.max_epochs={had} to finish that run exactly, or start a new run to train longer"
        )
