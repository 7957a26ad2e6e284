"""The plugin author's test kit: the checks every plugin must pass, on the real config, in a few seconds each.

In a test file of your project::

    from hooktrain.testing import check_plugin

    def test_output_norm_passes_the_kit(tmp_path):
        check_plugin("output_norm", tmp_path)        # conf/plugins/output_norm.yaml, or the class: check_plugin(OutputNorm, tmp_path)

Each check runs the main job's config (``model=mlp``, the digits, a few steps) with the plugin
acting on every step, and raises ``AssertionError`` with a sentence when the plugin breaks a
promise that hooktrain makes to its users:

- ``check_hooks_removed``: no hook of the plugin stays on the model after a fit, nor after an error;
- ``check_state_round_trip``: its buffers are in ``last.ckpt`` and load back into a fresh run;
- ``check_exact_resume``: 2 epochs straight and 1 + resume + 1 give the same weights and buffers, bit for bit;
- ``check_no_host_sync``: its hooks never read a tensor on the host, and idle steps touch none at all;
- ``check_ranks_agree``: in a 2-process DDP run (CPU, gloo), every rank ends with the same buffers.
"""

import inspect
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import nn

import hooktrain
from hooktrain.registry import example_overrides, plugin_class, settings_overrides
from hooktrain.run import build_run
from hooktrain.session import _Hook, _OutputGradHook
from hooktrain.stats import cpu_value

SMALL = [
    "model=mlp", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.deterministic=true",
]
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
_PACKAGE = Path(hooktrain.__file__).parent
# The code that runs plugins (the task's own loss read on logging steps is not a plugin's).
_SESSION_CODE = tuple(str(_PACKAGE / part) for part in ("session.py", "stats.py", "plugin.py", "writers.py", "engines"))
_HOOK_CODE = (_Hook._call.__code__, _OutputGradHook._register.__code__)


Plugin = str | type  # the name of a config in conf/plugins, or a HookPlugin subclass importable from the project root


def check_plugin(plugin: Plugin, work_dir: Path, config_dir: Path = Path("conf"), overrides: Sequence[str] = (), ddp: bool = True) -> None:
    """Every check below for ``plugin``, with ``overrides`` added (e.g. ``plugins.<name>.targets=[fc1]``)."""
    check_hooks_removed(plugin, work_dir / "hooks", config_dir, overrides)
    check_state_round_trip(plugin, work_dir / "state", config_dir, overrides)
    check_exact_resume(plugin, work_dir / "resume", config_dir, overrides)
    check_no_host_sync(plugin, work_dir / "sync", config_dir, overrides)
    if ddp:
        check_ranks_agree([plugin], work_dir / "ddp", config_dir, overrides)


def plugin_selection(
    plugins: Sequence[Plugin], config_dir: Path, every_n_steps: int = 1, log_every_n_steps: int | None = None
) -> tuple[list[str], list[type], list[str]]:
    """The plugins' names, classes, and the overrides that select them acting every ``every_n_steps`` steps (logging
    every ``log_every_n_steps``, by default as often) with their ``example_settings``: a config by ``plugins=[name]``,
    a class by ``+plugins.<snake_case name>._target_``."""
    configured = [plugin for plugin in plugins if isinstance(plugin, str)]
    names, classes, overrides = [], [], example_overrides(Path(config_dir), configured)
    for plugin in plugins:
        if isinstance(plugin, str):
            names.append(plugin)
            classes.append(plugin_class(Path(config_dir), plugin))
            continue
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", plugin.__name__).lower()
        names.append(name)
        classes.append(plugin)
        overrides += [f"+plugins.{name}._target_={plugin.__module__}.{plugin.__qualname__}"]
        overrides += settings_overrides(name, plugin.example_settings)
    cadence = {"every_n_steps": every_n_steps, "log_every_n_steps": log_every_n_steps or every_n_steps}
    for name in names:
        overrides += settings_overrides(name, cadence)
    return names, classes, overrides


def plugin_config(plugin: Plugin, out_dir: Path, config_dir: Path, overrides: Sequence[str] = (), every_n_steps: int = 1) -> DictConfig:
    """The train config, small, with the plugin acting every ``every_n_steps`` steps."""
    _, _, selection = plugin_selection([plugin], config_dir, every_n_steps)
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return compose("train", overrides=[*SMALL, *selection, f"paths.output_dir={out_dir}", *overrides])


def check_hooks_removed(plugin: Plugin, work_dir: Path, config_dir: Path = Path("conf"), overrides: Sequence[str] = ()) -> None:
    """After a fit, and after an exception in the middle of a step, the model holds none of the session's hooks."""
    (name,), _, _ = plugin_selection([plugin], config_dir)
    run = build_run(plugin_config(plugin, work_dir / "fit", config_dir, overrides))
    run.trainer.fit(run.task, datamodule=run.datamodule)
    _assert_no_session_hook(run.task, f"plugin {name!r}: after a fit")

    run = build_run(plugin_config(plugin, work_dir / "error", config_dir, overrides))
    run.trainer.callbacks.append(_FailMidStep(at_step=1))
    try:
        run.trainer.fit(run.task, datamodule=run.datamodule)
    except _Planned:
        pass
    else:
        raise AssertionError(f"plugin {name!r}: the planned error at step 1 did not stop the fit")
    _assert_no_session_hook(run.task, f"plugin {name!r}: after an error at step 1")


def check_state_round_trip(plugin: Plugin, work_dir: Path, config_dir: Path = Path("conf"), overrides: Sequence[str] = ()) -> None:
    """The plugin's buffers after a fit are those of ``last.ckpt``, and they load back into a fresh run's session."""
    (name,), _, _ = plugin_selection([plugin], config_dir)
    cfg = plugin_config(plugin, work_dir, config_dir, overrides)
    run = build_run(cfg)
    run.trainer.fit(run.task, datamodule=run.datamodule)
    trained = _plugin_buffers(run.task, name)
    saved = torch.load(work_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    in_checkpoint = {key: value for key, value in saved.items() if key.startswith(f"plugin_state.{name}.")}
    _assert_equal(in_checkpoint, trained, f"plugin {name!r}: last.ckpt against the buffers after the fit")

    fresh = build_run(cfg)
    fresh.hooks.setup(fresh.trainer, fresh.task, "fit")  # creates the state, as Lightning does before restoring
    fresh.task.load_state_dict(saved)
    _assert_equal(_plugin_buffers(fresh.task, name), trained, f"plugin {name!r}: a fresh run loading last.ckpt")


def check_exact_resume(plugin: Plugin, work_dir: Path, config_dir: Path = Path("conf"), overrides: Sequence[str] = ()) -> None:
    """A 2-epoch run straight, and one stopped after its first epoch then resumed from ``last.ckpt``, end with identical
    weights, optimizer state and buffers (deterministic kernels).

    Buffers of a plugin whose class says ``deterministic_state = False`` (wall-clock times) are left out.
    """
    (name,), (cls,), _ = plugin_selection([plugin], config_dir)
    two_epochs = [*overrides, "trainer.max_epochs=2"]
    straight = _fit(plugin_config(plugin, work_dir / "straight", config_dir, two_epochs))
    _fit(plugin_config(plugin, work_dir / "resumed", config_dir, two_epochs), stop_after_epoch=0)
    last = work_dir / "resumed" / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings():  # resuming in place is the point here
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        resumed = _fit(plugin_config(plugin, work_dir / "resumed", config_dir, [*two_epochs, f"ckpt_path={last}"]))
    skip = () if cls.deterministic_state else (f"plugin_state.{name}.",)
    _assert_equal(
        {key: value for key, value in resumed.state_dict().items() if not key.startswith(skip)},
        {key: value for key, value in straight.state_dict().items() if not key.startswith(skip)},
        f"plugin {name!r}: 1 epoch + resume + 1 epoch against 2 epochs straight",
    )
    optimizers = [torch.load(work_dir / run / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"] for run in ("straight", "resumed")]
    flat = [{f"{i}.{param}.{key}": value for i, state in enumerate(states) for param, values in state["state"].items()
             for key, value in values.items()} for states in optimizers]
    _assert_equal(flat[1], flat[0], f"plugin {name!r}: the optimizer state after resuming against straight")


def check_no_host_sync(plugin: Plugin, work_dir: Path, config_dir: Path = Path("conf"), overrides: Sequence[str] = ()) -> None:
    """No host read (``item``, ``tolist``, ``cpu``, ``numpy``, ``float()``, ``int()``, ``bool()``) inside the plugin's hooks on
    any step, and none from hooktrain or the plugin at all on its idle steps (active every 3rd step here).

    On a CPU these reads cost nothing, but on a GPU each one waits for the device: the calls are counted, wherever they run.
    """
    (name,), (cls,), _ = plugin_selection([plugin], config_dir)
    run = build_run(plugin_config(plugin, work_dir, config_dir, [*overrides, "trainer.limit_train_batches=7"], every_n_steps=3))
    watched = (*_SESSION_CODE, inspect.getfile(cls))
    with _counting_host_reads(watched) as reads:
        run.trainer.callbacks.insert(0, reads.step_tracker)
        run.trainer.fit(run.task, datamodule=run.datamodule)
    if reads.in_hooks:
        raise AssertionError(
            f"plugin {name!r} reads tensors on the host inside its hooks: {dict(reads.in_hooks)} ((step, method): calls); record tensors instead"
        )
    idle = {key: count for key, count in reads.anywhere.items() if key[0] % 3}
    if idle:
        raise AssertionError(f"plugin {name!r}: host reads on idle steps: {idle} ((step, method): calls); idle steps must cost nothing")


def check_ranks_agree(plugins: Sequence[Plugin], work_dir: Path, config_dir: Path = Path("conf"), overrides: Sequence[str] = ()) -> None:
    """A 2-process DDP fit on the CPU (gloo, Lightning's launcher): at every step's start, each rank's plugin buffers are equal."""
    import subprocess

    names, _, selection = plugin_selection(plugins, config_dir)
    command = [
        sys.executable, "train.py", *SMALL, "trainer.limit_train_batches=6", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        *selection, "+callbacks.rank_state._target_=hooktrain.testing.SaveRankState",
        f"+callbacks.rank_state.dirpath={work_dir}", f"hydra.run.dir={work_dir}", *overrides,
    ]
    root = Path(config_dir).resolve().parent
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"plugins {list(names)}: the 2-process DDP run failed:\n{result.stderr[-3000:]}")
    ranks = [torch.load(work_dir / f"plugin_state_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    _assert_equal(ranks[1], ranks[0], f"plugins {list(names)}: rank 1's buffers against rank 0's after a DDP fit")


class SaveRankState(Callback):
    """Saves this process's plugin buffers as each step starts, into ``<dirpath>/plugin_state_rank<rank>.pt`` (for ``check_ranks_agree``).

    At a step's start the buffers are what the last step's update wrote: DDP's broadcast of rank 0's
    buffers comes with the next forward, and would hide ranks that disagree.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.states: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        for key, value in pl_module.plugin_state.state_dict().items():
            self.states[f"step{trainer.global_step}.{key}"] = value.detach().cpu().clone()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(self.states, self.dirpath / f"plugin_state_rank{trainer.global_rank}.pt")


# Inside.


class _Planned(Exception):
    """The error check_hooks_removed causes on purpose."""


class _FailMidStep(Callback):
    """Raises after the forward of step ``at_step``: the step's hooks are attached, tensor hooks are on its outputs."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if trainer.global_step == self.at_step:
            raise _Planned(f"planned error at step {self.at_step}")


class _StopAfterEpoch(Callback):
    """Ends the fit after epoch ``epoch`` (its checkpoints written), as if the run had been stopped there."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _fit(cfg: DictConfig, stop_after_epoch: int | None = None) -> pl.LightningModule:
    run = build_run(cfg)
    if stop_after_epoch is not None:
        run.trainer.callbacks.append(_StopAfterEpoch(stop_after_epoch))
    run.trainer.fit(run.task, datamodule=run.datamodule, ckpt_path=cfg.get("ckpt_path"))
    return run.task


def _plugin_buffers(task: pl.LightningModule, name: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in task.state_dict().items() if key.startswith(f"plugin_state.{name}.")}


def _assert_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    if actual.keys() != expected.keys():
        raise AssertionError(f"{what}: keys differ: {sorted(set(actual) ^ set(expected))}")
    differing = [key for key in expected if not identical(actual[key], expected[key])]
    if differing:
        raise AssertionError(f"{what}: these tensors differ: {differing}")


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN equal to NaN (a running average before its first value)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


def _assert_no_session_hook(root: nn.Module, what: str) -> None:
    left = [
        f"{name or '<root>'}.{kind}"
        for name, module in root.named_modules()
        for kind in ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
        for hook in getattr(module, kind).values()
        if isinstance(hook, (_Hook, _OutputGradHook))
    ]
    if left:
        raise AssertionError(f"{what}, hooks are left on the model: {left}")


class _HostReads:
    """Counts of host reads by (step, method): inside plugin hooks, and anywhere in the watched code."""

    def __init__(self) -> None:
        self.in_hooks: Counter[tuple[int, str]] = Counter()
        self.anywhere: Counter[tuple[int, str]] = Counter()
        self.step = 0
        reads = self

        class StepTracker(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                reads.step = trainer.global_step

        self.step_tracker = StepTracker()


@contextmanager
def _counting_host_reads(watched: tuple[str, ...]) -> Iterator[_HostReads]:
    reads = _HostReads()
    originals = {method: getattr(torch.Tensor, method) for method in SYNC_METHODS}

    def counting(method: str, original: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if sys._getframe(1).f_code is cpu_value.__code__:  # reads only where free: never on an accelerator
                return original(tensor, *args, **kwargs)
            in_hook, in_watched = _where(sys._getframe(1), watched)
            if in_watched:
                reads.anywhere[(reads.step, method)] += 1
            if in_hook:
                reads.in_hooks[(reads.step, method)] += 1
            return original(tensor, *args, **kwargs)

        return counted

    for method, original in originals.items():
        setattr(torch.Tensor, method, counting(method, original))
    try:
        yield reads
    finally:
        for method, original in originals.items():
            setattr(torch.Tensor, method, original)


def _where(frame: FrameType | None, watched: tuple[str, ...]) -> tuple[bool, bool]:
    """Whether the call stack passes through a plugin hook, and through the watched files."""
    in_hook = in_watched = False
    while frame is not None and not in_hook:
        in_hook = frame.f_code in _HOOK_CODE
        in_watched = in_watched or frame.f_code.co_filename.startswith(watched)
        frame = frame.f_back
    return in_hook, in_watched
