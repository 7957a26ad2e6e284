"""``python -m hooktrain.bench``: training throughput of hooktrain against a raw PyTorch loop and plain Lightning.

Every variant trains the same model on the same digits batches for ``--warmup`` + ``--steps``
optimizer steps; each of the last ``--steps`` is timed from its batch start to the next one, so a
step's time holds all its work (data, loop, logging). Variants run interleaved, ``--repeats`` times
in a rotating order, so drift of a shared machine hits them alike.

Step time of a variant: for each step position, the median over repeats; then the mean over
positions. The median drops the machine's random stalls, which land on other steps in each repeat;
the mean keeps periodic work (a logging step every 50) at its true share. On a GPU every timed step
ends with ``torch.cuda.synchronize()``, so a step's time holds its kernels.

Variants: ``raw`` (a hand-written loop, the limit), ``lightning`` (a plain LightningModule with the
Trainer's defaults: what users would write instead), ``hooktrain`` (train.py's config, no plugins),
``hooktrain+<plugin>`` for each plugin at its default cadence, ``hooktrain+logging`` (together, the
plugins that only observe: ``changes_training`` is False), ``hooktrain+all``
(every plugin, clipping and nan_guard acting on every step included) and ``hooktrain+idle`` (every
plugin active on step 0 only, so idle while timed; plugins whose class says ``acts_when_idle`` are left
out, e.g. pruning: PyTorch's pruning hook applies the masks at every forward by design;
``hooktrain+pruning`` shows its cost). A plugin's ``example_settings`` are passed to it in every variant.
"""

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from torch import nn

import hooktrain  # noqa: F401  registers the trainer schema
from hooktrain.build import build
from hooktrain.registry import example_overrides, plugin_class, plugin_names
from hooktrain.run import build_run

NEVER = 10**9  # every_n_steps that leaves a plugin active on step 0 only


def stamp(stamps: list[float]) -> None:
    """Appends the time now, after the GPU's queued work (if any) is done."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    stamps.append(time.perf_counter())


class BatchClock(Callback):
    """Stamps the start of every training batch (it must be the first callback)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        stamp(self.stamps)


class PlainModule(pl.LightningModule):
    """The LightningModule a user writes without hooktrain: loss, one self.log, Adam."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


def compose_cfg(config_dir: Path, model: str, variant: str, total_steps: int, out_dir: str, extra: tuple[str, ...] = ()) -> DictConfig:
    overrides = [
        f"model={model}", "data.batch_size=64", f"paths.output_dir={out_dir}", f"trainer.max_steps={total_steps}",
        "trainer.max_epochs=null", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "trainer.enable_checkpointing=false", "trainer.enable_model_summary=false", "~callbacks.model_checkpoint", "~callbacks.last_checkpoint",
        "task.scheduler=null",
    ]
    names = plugin_names(config_dir)
    if variant == "hooktrain+logging":
        names = logging_plugins(config_dir)
    if variant == "hooktrain+idle":
        names = [name for name in names if not plugin_class(config_dir, name).acts_when_idle]
    if variant not in ("hooktrain+all", "hooktrain+idle", "hooktrain+logging"):
        names = [variant.removeprefix("hooktrain+")] if variant.startswith("hooktrain+") else []
    overrides += example_overrides(config_dir, names)  # with what a plugin needs to run at all (ablate: which module)
    if variant == "hooktrain+idle":
        overrides += [f"++plugins.{name}.{key}={NEVER}" for name in names for key in ("every_n_steps", "log_every_n_steps")]
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        return compose("train", overrides=[*overrides, *extra])


def logging_plugins(config_dir: Path) -> list[str]:
    """Plugins that only observe training (their class says ``changes_training = False``)."""
    return [name for name in plugin_names(config_dir) if not plugin_class(config_dir, name).changes_training]



def time_variant(
    config_dir: Path, model: str, variant: str, warmup: int, steps: int, overrides: tuple[str, ...] = ()
) -> list[float]:
    """Seconds of each of the last ``steps`` optimizer steps of ``warmup + steps`` (batch start to batch start)."""
    total = warmup + steps + 1
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = compose_cfg(config_dir, model, variant, total, out_dir, overrides)
        if variant == "raw":
            stamps = _run_raw_loop(cfg, total)
        else:
            stamps = _run_trainer(cfg, variant, total, out_dir)
    return [b - a for a, b in zip(stamps[warmup:-1], stamps[warmup + 1 :])]


def _run_trainer(cfg: DictConfig, variant: str, total: int, out_dir: str) -> list[float]:
    """Plain Lightning or hooktrain: batch start stamps of ``total`` steps."""
    clock = BatchClock()
    if variant == "lightning":
        pl.seed_everything(cfg.seed, verbose=False)
        datamodule = build(cfg.data, "data")
        module = PlainModule(build(cfg.model, "model"), lr=cfg.task.optimizer.lr)
        trainer = pl.Trainer(
            accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision, max_steps=total,
            limit_val_batches=0, enable_checkpointing=False, enable_model_summary=False, callbacks=[clock],
            logger=TensorBoardLogger(out_dir, name="lightning"),
        )
    else:
        run = build_run(cfg)
        trainer, module, datamodule = run.trainer, run.task, run.datamodule
        trainer.callbacks.insert(0, clock)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        trainer.fit(module, datamodule=datamodule)  # the progress bar still renders, unseen
    return clock.stamps


def _run_raw_loop(cfg: DictConfig, total: int) -> list[float]:
    """The hand-written loop: batch start stamps of ``total`` steps, on the config's device and precision."""
    pl.seed_everything(cfg.seed, verbose=False)
    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
    autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(str(cfg.trainer.precision))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    model = build(cfg.model, "model").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.task.optimizer.lr)
    model.train()
    stamps: list[float] = []
    while len(stamps) < total:
        for x, y in datamodule.train_dataloader():
            stamp(stamps)
            if len(stamps) == total:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return stamps


def peak_memory_mb(config_dir: Path, model: str, variant: str, warmup: int, steps: int, overrides: tuple[str, ...]) -> float:
    """Peak memory a training run adds, in a fresh process (peaks only grow): GPU memory on CUDA, else resident."""
    code = (
        "import resource, sys, torch; from pathlib import Path; from hooktrain.bench import time_variant, rss_mb;"
        "base = rss_mb(); time_variant(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), tuple(sys.argv[6:]));"
        "print(torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(config_dir), model, variant, str(warmup), str(steps), *overrides],
        capture_output=True, text=True, check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hooktrain.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet", "mlp"])
    parser.add_argument("--steps", type=int, default=150, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="also measure peak memory (one process per variant)")
    parser.add_argument("--config-dir", type=Path, default=Path("conf"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant, e.g. trainer=gpu trainer.precision=32-true")
    args = parser.parse_args(argv)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # keep the report readable
        logging.getLogger(name).setLevel(logging.WARNING)
    overrides = tuple(args.overrides)

    names = plugin_names(args.config_dir)
    variants = ["raw", "lightning", "hooktrain", *[f"hooktrain+{name}" for name in names], "hooktrain+logging", "hooktrain+all", "hooktrain+idle"]
    times: dict[tuple[str, str], list[list[float]]] = {(m, v): [] for m in args.models for v in variants}
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants):] + variants[: repeat % len(variants)]
        for model in args.models:
            for variant in order:
                gc.collect()
                times[(model, variant)].append(time_variant(args.config_dir, model, variant, args.warmup, args.steps, overrides))
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    step_time = {key: robust_step_time(runs) for key, runs in times.items()}
    rows = []
    for model in args.models:
        for variant in variants:
            seconds = step_time[(model, variant)]
            rows.append({
                "model": model, "variant": variant, "step_ms": 1000 * seconds, "samples_per_s": 64 / seconds,
                "median_step_ms": 1000 * statistics.median(t for run in times[(model, variant)] for t in run),
                "vs_raw": step_time[(model, "raw")] / seconds,
                "vs_hooktrain": seconds / step_time[(model, "hooktrain")],
                "run_means_ms": [round(1000 * statistics.fmean(run), 3) for run in times[(model, variant)]],
            })
    if args.memory:
        for row in rows:
            if row["variant"] in ("hooktrain", "hooktrain+logging", "hooktrain+all"):
                row["peak_mb"] = peak_memory_mb(args.config_dir, row["model"], row["variant"], args.warmup, args.steps, overrides)

    goals = check_goals(rows, args.models)
    device = torch.cuda.get_device_name() if torch.cuda.is_initialized() else f"{platform.machine()}, {os.cpu_count()} cores"
    report = {
        "date": date.today().isoformat(), "machine": f"{device}, torch {torch.__version__}", "overrides": list(overrides),
        "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "rows": rows, "goals": goals,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (args.out / "bench.md").write_text(markdown)
    print(markdown)


def robust_step_time(runs: list[list[float]]) -> float:
    """Mean over step positions of the median over repeats: random stalls drop out, periodic work stays."""
    return statistics.fmean(statistics.median(position) for position in zip(*runs))


def check_goals(rows: list[dict], models: list[str]) -> list[dict]:
    """The performance goals, each with its measured ratio and whether it holds."""
    by = {(row["model"], row["variant"]): row for row in rows}
    goals = []
    for model in models:
        base = by[(model, "hooktrain")]
        checks = [
            ("idle plugins cost <= 1% (step time, hooktrain+idle / hooktrain)", by[(model, "hooktrain+idle")]["vs_hooktrain"], "<=", 1.01),
            ("logging plugins at default cadence cost <= 5% (hooktrain+logging / hooktrain)", by[(model, "hooktrain+logging")]["vs_hooktrain"], "<=", 1.05),
            ("hooktrain without plugins >= 0.90x the raw loop's throughput", base["vs_raw"], ">=", 0.90),
        ]
        if "peak_mb" in base:
            checks.append(("peak memory with all plugins within 5% (hooktrain+all / hooktrain)", by[(model, "hooktrain+all")]["peak_mb"] / base["peak_mb"], "<=", 1.05))
        for name, value, op, bound in checks:
            holds = value <= bound if op == "<=" else value >= bound
            goals.append({"model": model, "goal": name, "value": round(value, 4), "bound": f"{op} {bound}", "holds": holds})
    return goals


def to_markdown(report: dict) -> str:
    lines = [
        f"Benchmark of {report['date']} on {report['machine']}, {report['threads']} threads; batch 64, "
        f"{report['repeats']} interleaved runs of {report['steps']} steps after {report['warmup']} warm-up steps"
        + (f"; overrides: `{' '.join(report['overrides'])}`." if report["overrides"] else "."),
        "",
        "Step time: per step position the median over runs, then the mean over positions (logging steps keep their share).",
        "",
        "| model | variant | step (ms) | median step (ms) | samples/s | throughput vs raw loop | step time vs hooktrain | peak memory (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        peak = f"{row['peak_mb']:.1f}" if "peak_mb" in row else ""
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['step_ms']:.3f} | {row['median_step_ms']:.3f} | {row['samples_per_s']:.0f} | "
            f"{row['vs_raw']:.3f}x | {row['vs_hooktrain']:.3f} | {peak} |"
        )
    lines += ["", "| model | goal | measured | bound | holds |", "| --- | --- | ---: | --- | --- |"]
    for goal in report["goals"]:
        lines.append(f"| {goal['model']} | {goal['goal']} | {goal['value']:.4f} | {goal['bound']} | {'yes' if goal['holds'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
