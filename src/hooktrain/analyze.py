"""``python -m hooktrain analyze``: run a data split through a trained model with plugins, train nothing.

The same config groups as training (model, data, plugins, logger) and a ``ckpt_path`` (a Lightning
checkpoint of either engine, or a ``model.pt``). Every chosen plugin runs in the ``analyze`` phase
on every batch; what they record goes to TensorBoard under ``watch/<plugin>/analyze/<stat>/<module>`` and
into a per-layer table on the console; plugins such as ``activation_cache`` write files. The
checkpoint is only read.
"""

import logging
import sys
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from hooktrain.build import build, build_plugins
from hooktrain.cli import check_command_line
from hooktrain.data.tensors import WholeBatches, batch_as_is
from hooktrain.errors import HooktrainError, in_one_sentence
from hooktrain.metrics import EpochAccuracy
from hooktrain.run import check_model_takes_data, uncompiled
from hooktrain.rundir import run_directory
from hooktrain.session import TAG_ROOT, HookSession
from hooktrain.writers import writers_for

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
BACKWARD_KINDS = ("backward_pre", "backward", "output_grad")


def main(args: list[str], config_dir: Path) -> None:
    """The command line: overrides checked as train.py checks them, then Hydra runs :func:`run`."""
    if not (config_dir / "analyze.yaml").is_file():
        raise SystemExit(f"error: no {config_dir / 'analyze.yaml'} here; run python -m hooktrain analyze from the project's folder (beside train.py)")
    check_command_line(args, config_dir, config_name="analyze")
    sys.argv = [f"{sys.argv[0]} analyze", *args]
    hydra.main(version_base="1.3", config_path=str(config_dir.resolve()), config_name="analyze")(run)()


def run(cfg: DictConfig) -> None:
    """The command's entry: a user mistake or a plugin's failure ends it in one sentence, exit status 1."""
    with in_one_sentence():
        analyze(cfg)


def analyze(cfg: DictConfig) -> dict[str, float]:
    """Loads the weights, runs ``cfg.split`` with the plugins, writes what they measured.

    Returns:
        ``{"<split>/loss": ..., "<split>/acc": ..., "watch/<plugin>/analyze/<stat>/<module>": ...}``.

    Raises:
        HooktrainError: no or a wrong ``ckpt_path``, an unknown split, a plugin refusing its input;
            all before anything is written (a plugin's own check runs on the first batch).
    """
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise HooktrainError("`ckpt_path` is required: the checkpoint to analyze, e.g. ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt or .../model.pt")
    if cfg.split not in SPLITS:
        raise HooktrainError(f"`split`: there is no split {cfg.split!r}; choose one of {', '.join(SPLITS)}")
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build(cfg.data, "data")
    model, _ = uncompiled(build(cfg.model, "model"), False)
    check_model_takes_data(model, datamodule)
    load_weights(model, cfg.ckpt_path)
    loader = split_loader(datamodule, cfg.split)
    plugins = build_plugins(cfg.get("plugins"))
    for plugin in plugins:  # chosen for this analysis: each runs here, whatever its training phases
        if "analyze" not in plugin.phases:
            plugin.phases = (*plugin.phases, "analyze")
    output_dir = Path(cfg.paths.output_dir)
    with run_directory(output_dir, resuming_from=None):
        return run_split(model, loader, plugins, cfg, output_dir)


def run_split(model: nn.Module, loader: DataLoader, plugins: list, cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    """Every batch through the model (and, when a plugin hooks gradients, the loss back), the plugins in the analyze phase."""
    needs_backward = any(kind in plugin.hook_kinds() for plugin in plugins for kind in BACKWARD_KINDS)
    session = HookSession(model, plugins).setup()
    info = session.info
    info.output_dir, info.split, info.split_size = output_dir, cfg.split, len(loader.dataset)
    totals = EpochAccuracy()
    model.eval()
    session.start_phase("analyze")
    try:
        position = 0
        for x, y in loader:
            info.targets, info.sample_index = y, torch.arange(position, position + len(y))
            with torch.enable_grad() if needs_backward else torch.no_grad():
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if needs_backward:
                    loss.backward()
                    model.zero_grad(set_to_none=True)
            totals.add(loss, logits, y)
            position += len(y)
        logger = build(cfg.logger, "logger")
        session.writers = writers_for([logger])  # only now: a plugin that stops the run leaves nothing written
        scalars = session.finish_phase()
    finally:
        session.close()
    loss_sum, correct = totals.totals().tolist()
    metrics = {f"{cfg.split}/loss": loss_sum / totals.count, f"{cfg.split}/acc": correct / totals.count}
    logger.log_metrics(metrics, step=0)
    logger.finalize("success")
    print(table(metrics, scalars, [name for name, _ in model.named_modules()]))
    return {**metrics, **scalars}


def load_weights(model: nn.Module, ckpt_path: str) -> None:
    """The model's weights from a Lightning checkpoint (``state_dict``'s ``model.*``) or a ``model.pt``;
    pruned weights (``weight_orig`` and ``weight_mask``) are multiplied out.

    Raises:
        HooktrainError: no such file, not a checkpoint, or the weights of another model.
    """
    if not Path(ckpt_path).is_file():
        raise HooktrainError(f"`ckpt_path`: no file at {ckpt_path!r}; give a .ckpt of a run's checkpoints/ or its model.pt")
    try:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated, not torch's format: all mean "not a checkpoint"
        raise HooktrainError(f"`ckpt_path`: {ckpt_path!r} is not a checkpoint torch.load can read ({type(error).__name__})") from None
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        saved = {key.removeprefix("model."): value for key, value in saved["state_dict"].items() if key.startswith("model.")}
    if not isinstance(saved, dict):
        raise HooktrainError(f"`ckpt_path`: {ckpt_path!r} holds no state dict; give a .ckpt of a run's checkpoints/ or its model.pt")
    for key in [key for key in saved if key.endswith("_orig") and f"{key[:-5]}_mask" in saved]:
        saved[key[:-5]] = saved.pop(key) * saved.pop(f"{key[:-5]}_mask")
    own = model.state_dict()
    differing = sorted({(key, tuple(value.shape)) for key, value in saved.items()} ^ {(key, tuple(value.shape)) for key, value in own.items()})
    if differing:
        raise HooktrainError(
            f"`ckpt_path`: {ckpt_path!r} holds another model (differing tensors: {differing[:4]}); "
            "analyze with the model config it was trained with (the run's config.yaml names it)"
        )
    model.load_state_dict(saved)


def split_loader(datamodule: pl.LightningDataModule, split: str) -> DataLoader:
    """The split in its stored order, so a sample's position is its index in the split (and in activation files)."""
    datamodule.setup("test" if split == "test" else "fit")
    splits = getattr(datamodule, "splits", None)
    if isinstance(splits, dict) and split in splits:
        data = splits[split]
        batch_size = getattr(datamodule, "batch_size", 64)
        return DataLoader(data, batch_sampler=WholeBatches(SequentialSampler(data), batch_size, drop_last=False), collate_fn=batch_as_is)
    if split == "train":
        raise HooktrainError("`split=train` needs an in-memory data module (hooktrain.data's); use split=val or split=test for this one")
    return getattr(datamodule, f"{split}_dataloader")()


def table(metrics: dict[str, float], scalars: dict[str, float], module_order: list[str]) -> str:
    """Per layer, in the model's order, one column per plugin statistic measured; the split's loss and accuracy first."""
    columns: dict[str, dict[str, float]] = {}
    for tag, value in scalars.items():
        root, plugin, phase, stat, module = (tag.split("/", 4) + ["", "", "", ""])[:5]
        if root == TAG_ROOT and phase == "analyze" and module:
            columns.setdefault(f"{plugin}/{stat}", {})[module] = value
    lines = [", ".join(f"{name} {value:.4f}" for name, value in metrics.items())]
    if columns:
        modules = [name for name in module_order if any(name in values for values in columns.values())]
        width = max(len(name) for name in modules)
        lines.append(f"{'module':<{width}}  " + "  ".join(f"{column:>{max(len(column), 10)}}" for column in columns))
        for module in modules:
            cells = [f"{columns[column].get(module, float('nan')):>{max(len(column), 10)}.4g}" for column in columns]
            lines.append(f"{module:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)

