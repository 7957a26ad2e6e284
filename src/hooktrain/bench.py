"""``python -m hooktrain.bench``: training throughput of hooktrain's two engines against a raw PyTorch loop and plain Lightning.

Every variant trains the same model on the same digits batches, from the same loader, optimizer
(the config's, weight decay included) and precision, for ``--warmup`` + ``--steps`` optimizer steps.
The loader marks each step's start and end as it hands out batches, in every variant alike, so a
step's time holds all its work: data, loop, logging. The variants run ``--repeats`` times in a
rotating order, side by side (lockstep, below) or one after another; a variant's step time is the
mean step time of its least disturbed run (periodic work, a logging step every 50, keeps its share),
and each ratio comes with its spread over the repeats (the ratio within each repeat, min to max).
The CPU time other processes used during each run is recorded, and a run where it exceeded 0.2 core
is reported. Python calls and PyTorch operator calls per step are counted too: figures no machine
noise moves. On a GPU every step boundary waits for ``torch.cuda.synchronize()``, so a step's time
holds its kernels.

Variants: ``raw`` (a hand-written loop, the limit), ``lightning`` (a plain LightningModule on the
Trainer with the config's callbacks and logger: what users would write instead), ``hooktrain``
(train.py's config on the Trainer engine, no plugins) and ``fabric`` (the same on the Fabric engine,
``trainer=fabric``); after either engine's name, ``+<plugin>`` for each plugin at its default
cadence, ``+logging`` (together, the plugins that only observe: ``changes_training`` is False),
``+all`` (every plugin, clipping and nan_guard acting on every step included) and ``+idle`` (every
plugin active on step 0 only, so idle while timed; plugins whose class says ``acts_when_idle`` are
left out, e.g. pruning, which keeps its pruned weights at zero on every step;
``+pruning`` shows its cost); and sets of your own: ``+a,b`` (those plugins) and ``+all-a,b`` (every plugin
but those: what each costs among the others). A plugin's ``example_settings`` are passed to it in every variant.
``--variants`` picks some: ``--variants raw fabric hooktrain fabric+all fabric+all-grad_clip``.

Lockstep (the default): every variant trains side by side in this process, one step each in turn
(:mod:`hooktrain.stepclock`), each step timed alone. A slowdown of the shared machine then lands on
all variants alike: on this project's 2 shared cores a ratio's spread over 5 rounds is about 5 points
wide (3 with 10 variants), where runs timed one after another (``--no-lockstep``) spread by 20-40%,
too much to decide a 1-8% goal.
Needs greenlet (``pip install 'hooktrain[bench]'``).
"""

import argparse
import contextlib
import cProfile
import gc
import io
import json
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import hooktrain  # noqa: F401  registers the trainer schema
from hooktrain.build import build
from hooktrain.registry import example_overrides, plugin_class, training_plugins
from hooktrain.run import build_run
from hooktrain.session import HookSession
from hooktrain.stepclock import Stamps, in_turn, stamp_batches

NEVER = 10**9  # every_n_steps that leaves a plugin active on step 0 only


class PlainModule(pl.LightningModule):
    """The LightningModule a user writes without hooktrain: loss, one self.log, the config's optimizer."""

    def __init__(self, model: nn.Module, optimizer) -> None:
        super().__init__()
        self.model, self.optimizer_factory = model, optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())


def engine_and_plugins(variant: str) -> tuple[str, str | None]:
    """``"fabric+grad_clip"`` -> ``("fabric", "grad_clip")``; ``"raw"`` -> ``("raw", None)``."""
    engine, _, plugins = variant.partition("+")
    return engine, plugins or None


def compose_cfg(config_dir: Path, model: str, variant: str, total_steps: int, out_dir: str, extra: tuple[str, ...] = ()) -> DictConfig:
    engine, selection = engine_and_plugins(variant)
    overrides = [
        *(["trainer=fabric"] if engine == "fabric" else []), f"model={model}", "data.batch_size=64", f"paths.output_dir={out_dir}", f"trainer.max_steps={total_steps}",
        "trainer.max_epochs=null", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "trainer.enable_checkpointing=false", "trainer.enable_model_summary=false", "~callbacks.model_checkpoint", "~callbacks.last_checkpoint",
        "task.scheduler=null",
    ]
    names = selected_plugins(config_dir, selection)
    overrides += example_overrides(config_dir, names)  # with what a plugin needs to run at all (ablate: which module)
    if selection == "idle":
        overrides += [f"++plugins.{name}.{key}={NEVER}" for name in names for key in ("every_n_steps", "log_every_n_steps")]
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        return compose("train", overrides=[*overrides, *extra])


def selected_plugins(config_dir: Path, selection: str | None) -> list[str]:
    """The plugins of a variant's ``+<selection>``: one plugin, ``a,b`` (those), ``all-a,b`` (all but those), ``logging``, ``all`` or ``idle``.

    Raises:
        ValueError: a name that is not one of the plugins in ``config_dir`` that train (``patch`` needs a trained model), naming them.
    """
    if not selection:
        return []
    if selection == "logging":
        return logging_plugins(config_dir)
    every = training_plugins(config_dir)
    if selection == "all":
        return every
    if selection == "idle":  # plugins that act on every step whatever their cadence cannot be idle: left out
        return [name for name in every if not plugin_class(config_dir, name).acts_when_idle]
    names = list(dict.fromkeys(selection.removeprefix("all-").split(",")))
    if unknown := [name for name in names if name not in every]:
        raise ValueError(f"{', '.join(map(repr, unknown))} is not among the plugins that train ({', '.join(every)})")
    return [name for name in every if name not in names] if selection.startswith("all-") else names


def logging_plugins(config_dir: Path) -> list[str]:
    """Plugins that only observe training (their class says ``changes_training = False``)."""
    return [name for name in training_plugins(config_dir) if not plugin_class(config_dir, name).changes_training]


def time_variant(
    config_dir: Path, model: str, variant: str, warmup: int, steps: int, overrides: tuple[str, ...] = ()
) -> tuple[list[float], float, float]:
    """Seconds of each of the last ``steps`` optimizer steps of ``warmup + steps`` (batch to batch), the cores
    other processes kept busy meanwhile (on average), and the seconds from the last step to the fit's return (the
    fit's end: a last epoch's work, the final pictures, the loggers' flush)."""
    total = warmup + steps + 1
    stamps = Stamps()
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = compose_cfg(config_dir, model, variant, total, out_dir, overrides)
        with OtherLoad() as load, quiet():
            _run(cfg, variant, total, stamps)
            ended = time.perf_counter()
    return stamps.step_times(warmup), load.cores, ended - stamps.starts[-1]


def time_lockstep(
    config_dir: Path, model: str, variants: list[str], warmup: int, steps: int, overrides: tuple[str, ...] = ()
) -> dict[str, tuple[list[float], float, float]]:
    """What :func:`time_variant` gives for each variant, with the variants training side by side, one step each in
    turn (``variants``' order; :func:`hooktrain.stepclock.in_turn`): a slowdown of the shared machine then lands on
    all of them alike. The cores other processes kept busy are one figure for the whole run."""
    total = warmup + steps + 1
    ends: dict[str, float] = {}

    def run(variant: str, cfg: DictConfig) -> Callable[[Stamps], None]:
        def train(stamps: Stamps) -> None:
            _run(cfg, variant, total, stamps)
            ends[variant] = time.perf_counter() - stamps.starts[-1]  # its fit's end ran alone: nothing else resumed

        return train

    with tempfile.TemporaryDirectory() as out_dir:
        runs = {variant: run(variant, compose_cfg(config_dir, model, variant, total, f"{out_dir}/{index}", overrides))
                for index, variant in enumerate(variants)}
        with OtherLoad() as load, quiet():
            stamps = in_turn(runs)
    return {variant: (stamps[variant].step_times(warmup), load.cores, ends[variant]) for variant in variants}


@contextlib.contextmanager
def quiet():
    """Progress bars and Lightning's notes go nowhere (they still render: their cost is in the step)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def _run(cfg: DictConfig, variant: str, total: int, stamps: Stamps) -> None:
    if variant == "raw":
        _run_raw_loop(cfg, total, stamps)
    else:
        _run_trainer(cfg, variant, stamps)


class OtherLoad:
    """The cores other processes kept busy while the block ran: the machine's busy CPU time (``/proc/stat``) less this process's."""

    cores = 0.0

    def __enter__(self) -> "OtherLoad":
        self._start = self._read()
        return self

    def __exit__(self, *exc_info: object) -> None:
        busy, own, wall = (end - start for start, end in zip(self._start, self._read()))
        self.cores = max(busy - own, 0.0) / wall if wall > 0 else 0.0

    @staticmethod
    def _read() -> tuple[float, float, float]:
        try:
            with open("/proc/stat") as stat:
                fields = [int(value) for value in stat.readline().split()[1:]]
        except OSError:  # not Linux: no load figure
            return 0.0, 0.0, time.perf_counter()
        idle = fields[3] + fields[4]  # idle + iowait
        times = os.times()
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), times.user + times.system, time.perf_counter()


def _run_trainer(cfg: DictConfig, variant: str, stamps: Stamps) -> None:
    """Plain Lightning, or hooktrain on either engine, until ``trainer.max_steps``."""
    if variant == "lightning":
        pl.seed_everything(cfg.seed, verbose=False)
        datamodule = build(cfg.data, "data")
        module = PlainModule(build(cfg.model, "model"), build(cfg.task.optimizer, "task.optimizer"))
        callbacks = [build(node, f"callbacks.{name}") for name, node in cfg.callbacks.items()]
        trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=build(cfg.logger, "logger"))
    else:
        run = build_run(cfg)
        trainer, module, datamodule = run.trainer, run.task, run.datamodule
    stamp_batches(datamodule, stamps)
    trainer.fit(module, datamodule=datamodule)


def _run_raw_loop(cfg: DictConfig, total: int, stamps: Stamps) -> None:
    """The hand-written loop for ``total`` steps, with the config's loader, optimizer, device and precision."""
    pl.seed_everything(cfg.seed, verbose=False)
    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
    autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(str(cfg.trainer.precision))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    stamp_batches(datamodule, stamps)
    model = build(cfg.model, "model").to(device)
    if cfg.get("compile"):  # compiled as train.py compiles it: python -m hooktrain.bench compile=true
        model.compile(**({"backend": cfg.compile} if isinstance(cfg.compile, str) else {}))
    optimizer = build(cfg.task.optimizer, "task.optimizer")(model.parameters())
    model.train()
    while len(stamps) < total:
        for x, y in datamodule.train_dataloader():
            if len(stamps) == total:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()


class OpCounter(TorchDispatchMode):
    """Counts PyTorch operator calls (forward, backward and optimizer alike): each is a kernel launch or more."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def calls_per_step(config_dir: Path, model: str, variant: str, overrides: tuple[str, ...], short: int = 50, long: int = 100) -> dict[str, float]:
    """Python calls and PyTorch operator calls per optimizer step, free of the machine's noise: each counted over runs
    of ``long`` and ``short`` steps (after one run that imports and caches what a first run does), the difference
    divided by ``long - short``, so set-up cancels out."""

    def run(total: int, counter: Any) -> None:
        with tempfile.TemporaryDirectory() as out_dir, quiet():
            cfg = compose_cfg(config_dir, model, variant, total, out_dir, overrides)
            with counter, pictures_left_out():
                _run(cfg, variant, total, Stamps())

    run(short, contextlib.nullcontext())
    python, ops = [], []
    for total in (short, long):
        profile = cProfile.Profile()
        run(total, profile)
        python.append(pstats.Stats(profile, stream=io.StringIO()).total_calls)
        counter = OpCounter()
        run(total, counter)
        ops.append(counter.count)
    return {"python_calls": (python[1] - python[0]) / (long - short), "torch_ops": (ops[1] - ops[0]) / (long - short)}


@contextlib.contextmanager
def pictures_left_out():
    """No drawing at the fit's end while counting: pictures of 100 steps hold more than those of 50, which is no step's
    work (the fit's end column times them)."""
    draw = HookSession.draw
    HookSession.draw = lambda self, final=False: None
    try:
        yield
    finally:
        HookSession.draw = draw


def peak_memory_mb(config_dir: Path, model: str, variant: str, warmup: int, steps: int, overrides: tuple[str, ...]) -> float:
    """Peak memory a training run adds, in a fresh process (peaks only grow): GPU memory on CUDA, else resident."""
    code = (
        "import sys, torch; from pathlib import Path; from hooktrain.bench import time_variant, rss_mb, peak_rss_mb;"
        "base = rss_mb(); time_variant(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), tuple(sys.argv[6:]));"
        "print(torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else peak_rss_mb() - base)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(config_dir), model, variant, str(warmup), str(steps), *overrides],
        capture_output=True, text=True, check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory since its program started (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``:
    Linux keeps that across ``exec``, so a child started from a large benchmark process reported the parent's size."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def all_variants(config_dir: Path) -> list[str]:
    """raw, lightning, then each engine alone, with each plugin, and with the logging, all and idle sets."""
    suffixes = ["", *[f"+{name}" for name in training_plugins(config_dir)], "+logging", "+all", "+idle"]
    return ["raw", "lightning", *[f"{engine}{suffix}" for engine in ENGINES for suffix in suffixes]]


def variant_error(config_dir: Path, variant: str) -> str | None:
    """Why a variant name does not read as one (an engine, then any plugins), or None."""
    engine, selection = engine_and_plugins(variant)
    if engine not in ENGINES:
        return f"{engine!r} is not one of {', '.join(ENGINES)}" if selection else f"not raw, lightning, {' or '.join(ENGINES)}"
    if variant.endswith("+"):
        return "no plugins after '+'"
    try:
        selected_plugins(config_dir, selection)
    except ValueError as error:
        return str(error)
    return None


ENGINES = ("hooktrain", "fabric")  # the Trainer engine (train.py's default) and trainer=fabric
BUSY = 0.2  # cores other processes may use during a run before its timing is flagged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hooktrain.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet", "mlp"])
    parser.add_argument("--variants", nargs="+", help="the variants to time (default: all), e.g. raw lightning hooktrain fabric fabric+all")
    parser.add_argument("--steps", type=int, default=150, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lockstep", action=argparse.BooleanOptionalAction, default=True,
                        help="train the variants side by side, one step each in turn (see above); --no-lockstep: one run after another")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="also measure peak memory (one process per variant)")
    parser.add_argument("--counts", action=argparse.BooleanOptionalAction, default=True, help="also count Python calls and PyTorch ops per step")
    parser.add_argument("--config-dir", type=Path, default=Path("conf"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant, e.g. trainer.accelerator=gpu trainer.precision=32-true")
    args = parser.parse_args(argv)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # keep the report readable
        logging.getLogger(name).setLevel(logging.WARNING)
    overrides = tuple(args.overrides)
    if engine_choice := [override for override in overrides if override.lstrip("+~").startswith("trainer=")]:
        parser.error(
            f"{engine_choice[0]}: the benchmark picks each variant's engine (trainer=fabric for fabric*, the Trainer for the rest); "
            "set what both engines take instead, e.g. trainer.accelerator=gpu trainer.precision=bf16-mixed"
        )
    known = all_variants(args.config_dir)
    variants = args.variants or known
    errors = {variant: variant_error(args.config_dir, variant) for variant in variants if variant not in known}
    if unknown := {variant: error for variant, error in errors.items() if error}:
        reasons = "; ".join(f"{variant}: {error}" for variant, error in unknown.items())
        parser.error(f"unknown variant(s) {', '.join(unknown)} ({reasons}); choose from: {' '.join(known)}, "
                     f"or an engine with a set of plugins, e.g. fabric+grad_clip,nan_guard or hooktrain+all-ablate")
    if "raw" not in variants:
        variants = ["raw", *variants]  # every ratio is against it

    load_before = _loadavg()
    times: dict[tuple[str, str], list[list[float]]] = {(m, v): [] for m in args.models for v in variants}
    loads: dict[tuple[str, str], list[float]] = {(m, v): [] for m in args.models for v in variants}
    ends: dict[tuple[str, str], list[float]] = {(m, v): [] for m in args.models for v in variants}
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants):] + variants[: repeat % len(variants)]
        for model in args.models:
            if args.lockstep:
                gc.collect()
                timed = time_lockstep(args.config_dir, model, order, args.warmup, args.steps, overrides)
            else:
                timed = {}
                for variant in order:
                    gc.collect()
                    timed[variant] = time_variant(args.config_dir, model, variant, args.warmup, args.steps, overrides)
            for variant, (steps, other, end) in timed.items():
                times[(model, variant)].append(steps)
                loads[(model, variant)].append(round(other, 3))
                ends[(model, variant)].append(end)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    rows = [row_of(model, variant, times, loads) | {"fit_end_s": round(min(ends[(model, variant)]), 4)} for model in args.models for variant in variants]
    if args.memory:
        for row in rows:
            if row["variant"] in ("hooktrain", "hooktrain+logging", "hooktrain+all"):
                row["peak_mb"] = peak_memory_mb(args.config_dir, row["model"], row["variant"], args.warmup, args.steps, overrides)
    if args.counts:
        for row in rows:
            row.update(calls_per_step(args.config_dir, row["model"], row["variant"], overrides))
    busy = [f"{row['model']} {row['variant']} ({max(row['other_load_cores'])} cores)" for row in rows if max(row["other_load_cores"]) > BUSY]
    if busy:
        print(f"warning: other processes used more than {BUSY} core during: {', '.join(busy)}; re-run on a quieter machine", file=sys.stderr)

    acting = [name for name in training_plugins(args.config_dir) if plugin_class(args.config_dir, name).changes_training]
    goals = check_goals(rows, args.models, acting)
    device = torch.cuda.get_device_name() if torch.cuda.is_initialized() else f"{platform.machine()}, {os.cpu_count()} cores"
    report = {
        "date": date.today().isoformat(), "machine": f"{device}, torch {torch.__version__}", "overrides": list(overrides),
        "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "lockstep": args.lockstep,
        "load_before": load_before, "busy_runs": busy, "rows": rows, "goals": goals,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (args.out / "bench.md").write_text(markdown)
    print(markdown)


def row_of(model: str, variant: str, times: dict, loads: dict) -> dict:
    """One table row: step time, throughput and its ratios, each ratio with its spread over repeats (min, max)."""
    engine, _ = engine_and_plugins(variant)
    baseline = engine
    seconds, raw = robust_step_time(times[(model, variant)]), robust_step_time(times[(model, "raw")])
    row = {
        "model": model, "variant": variant, "step_ms": 1000 * seconds, "samples_per_s": 64 / seconds,
        "vs_raw": raw / seconds, "vs_raw_spread": _spread(times[(model, "raw")], times[(model, variant)]),
        "run_means_ms": [round(1000 * statistics.fmean(run), 3) for run in times[(model, variant)]],
        "other_load_cores": loads[(model, variant)],
    }
    if engine in ENGINES and (model, baseline) in times:
        row["vs_engine"] = seconds / robust_step_time(times[(model, baseline)])
        row["vs_engine_spread"] = _spread(times[(model, variant)], times[(model, baseline)])
    return row


def _spread(numerators: list[list[float]], denominators: list[list[float]]) -> list[float]:
    """Min and max over repeats of the ratio of mean step times within one repeat (the runs of one repeat ran back to back)."""
    ratios = [statistics.fmean(a) / statistics.fmean(b) for a, b in zip(numerators, denominators)]
    return [round(min(ratios), 4), round(max(ratios), 4)]


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def robust_step_time(runs: list[list[float]]) -> float:
    """The mean step time of the least disturbed run: periodic work (a logging step every 50) keeps its share.

    On a shared machine a slowdown lasts longer than a step: it lifts whole runs (by 20-40% here),
    and the least lifted run is the closest to what the code costs (timeit's reasoning).
    """
    return min(statistics.fmean(run) for run in runs)


def check_goals(rows: list[dict], models: list[str], acting_names: list[str]) -> list[dict]:
    """The performance goals of the variants timed, each with its measured ratio and whether it holds; ``acting_names``:
    the plugins that change training (each held to 8% on LeNet), the others only observe."""
    by = {(row["model"], row["variant"]): row for row in rows}
    goals = []

    def goal(model: str, name: str, variant: str, key: str, op: str, bound: float) -> None:
        if (model, variant) in by and key in by[(model, variant)]:
            value = by[(model, variant)][key]
            holds = value <= bound if op == "<=" else value >= bound
            spread = by[(model, variant)].get(f"{key}_spread")
            goals.append({"model": model, "goal": name, "value": round(value, 4), "bound": f"{op} {bound}", "holds": holds, "spread": spread})

    for model in models:
        goal(model, "Fabric engine without plugins >= 0.95x the raw loop's throughput", "fabric", "vs_raw", ">=", 0.95)
        if (model, "lightning") in by:
            goal(model, "Trainer engine without plugins ahead of plain Lightning (throughput vs raw)", "hooktrain", "vs_raw", ">=",
                 round(by[(model, "lightning")]["vs_raw"], 4))
        for engine in ENGINES:
            goal(model, f"idle plugins cost <= 1% ({engine}+idle / {engine})", f"{engine}+idle", "vs_engine", "<=", 1.01)
            goal(model, f"logging plugins at default cadence cost <= 5% ({engine}+logging / {engine})", f"{engine}+logging", "vs_engine", "<=", 1.05)
        if model == "lenet":
            for engine in ENGINES:
                for name in acting_names:
                    variant = f"{engine}+{name}"
                    goal(model, f"a plugin acting on every step costs <= 8% ({variant} / {engine})", variant, "vs_engine", "<=", 1.08)
            for engine in ENGINES:
                goal(model, f"every plugin together costs <= 25% ({engine}+all / {engine})", f"{engine}+all", "vs_engine", "<=", 1.25)
        if "peak_mb" in by.get((model, "hooktrain"), {}) and "peak_mb" in by.get((model, "hooktrain+all"), {}):
            value = by[(model, "hooktrain+all")]["peak_mb"] / by[(model, "hooktrain")]["peak_mb"]
            goals.append({"model": model, "goal": "peak memory with all plugins within 5% (hooktrain+all / hooktrain)",
                          "value": round(value, 4), "bound": "<= 1.05", "holds": value <= 1.05})
    return goals


def to_markdown(report: dict) -> str:
    lines = [
        f"Benchmark of {report['date']} on {report['machine']}, {report['threads']} threads; batch 64, "
        f"{report['repeats']} {'rounds of the variants side by side, one step each in turn' if report.get('lockstep') else 'interleaved runs'} "
        f"of {report['steps']} steps after {report['warmup']} warm-up steps"
        + (f"; overrides: `{' '.join(report['overrides'])}`." if report["overrides"] else "."),
        f"Load average before: {report['load_before']}."
        + (f" **Busy machine during: {'; '.join(report['busy_runs'])}.**" if report["busy_runs"] else " Other processes stayed under 0.2 core in every run."),
        "",
        "Step time: the mean step time of the variant's least disturbed run (logging steps keep their share). "
        "Ratios in brackets: the ratio within each repeat, min-max. Calls and ops: per step, counted over steps 50-100 "
        "(one logging step in 50, as in training). Fit's end: from the last step to the fit's return, least of the runs "
        "(a last epoch's work, the pictures drawn at the end, the loggers' flush). hooktrain = the Trainer engine, fabric = `trainer=fabric`.",
        "",
        "| model | variant | step (ms) | samples/s | throughput vs raw loop | step time vs same engine, no plugins | fit's end (s) | other load (cores, max) | Python calls / step | PyTorch ops / step | peak memory (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        peak = f"{row['peak_mb']:.1f}" if "peak_mb" in row else ""
        vs_engine = f"{row['vs_engine']:.3f} [{row['vs_engine_spread'][0]:.2f}-{row['vs_engine_spread'][1]:.2f}]" if "vs_engine" in row else ""
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['step_ms']:.3f} | {row['samples_per_s']:.0f} | "
            f"{row['vs_raw']:.3f}x [{row['vs_raw_spread'][0]:.2f}-{row['vs_raw_spread'][1]:.2f}] | {vs_engine} | {row.get('fit_end_s', float('nan')):.2f} | "
            f"{max(row['other_load_cores']):.2f} | {row.get('python_calls', float('nan')):.0f} | {row.get('torch_ops', float('nan')):.0f} | {peak} |"
        )
    lines += ["", "| model | goal | measured [repeats] | bound | holds |", "| --- | --- | ---: | --- | --- |"]
    for goal in report["goals"]:
        spread, bound = goal.get("spread"), float(goal["bound"].split()[1])
        shown = f"{goal['value']:.4f}" + (f" [{spread[0]:.2f}-{spread[1]:.2f}]" if spread else "")
        noisy = " (inside the noise)" if spread and spread[0] <= bound <= spread[1] else ""
        lines.append(f"| {goal['model']} | {goal['goal']} | {shown} | {goal['bound']} | {'yes' if goal['holds'] else 'NO'}{noisy} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
