"""PluginRunner: the Lightning Callback that attaches plugin hooks, flushes their statistics and cleans up."""

import logging
import time
import warnings
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hooktrain.errors import HooktrainError, PluginHookError
from hooktrain.plugin import HookContext, HookPlugin, StepInfo
from hooktrain.select import select_modules
from hooktrain.stats import StepStats

log = logging.getLogger(__name__)

# The first layer's input needs no gradient, so its full backward hook gets grad_input of Nones and
# PyTorch warns once. Expected: plugins read grad_output for "the gradient at this layer".
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs")


class _OutputGradHook:
    """A forward hook that puts the plugin's ``output_grad`` hook on the module's output tensor."""

    def __init__(self, hook: "_Hook") -> None:
        self.hook = hook

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(partial(self.hook, module))


def _register_output_grad_hook(module: nn.Module, hook: "_Hook") -> RemovableHandle:
    return module.register_forward_hook(_OutputGradHook(hook))


_REGISTER = {
    "forward_pre": nn.Module.register_forward_pre_hook,
    "forward": nn.Module.register_forward_hook,
    "backward_pre": nn.Module.register_full_backward_pre_hook,
    "backward": nn.Module.register_full_backward_hook,
    "output_grad": _register_output_grad_hook,
}
_STEP_METHODS = ("before_optimizer_step", "after_optimizer_step")


class _Hook:
    """One call into a plugin: passes its context, times it, and names the culprit on error.

    A plain object with a bound method, not a closure, so a model with hooks attached still pickles.
    """

    def __init__(self, plugin: HookPlugin, kind: str, ctx: HookContext) -> None:
        self.plugin = plugin
        self.kind = kind
        self.ctx = ctx

    def __call__(self, module: nn.Module, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return getattr(self.plugin, self.kind)(self.ctx, module, *args)
        except PluginHookError:
            raise
        except Exception as error:
            raise PluginHookError(
                f"plugin {self.plugin.name!r} failed in its {self.kind} hook on module "
                f"{self.ctx.module_name!r}: {type(error).__name__}: {error}"
            ) from error
        finally:
            self.ctx.info.charge(self.plugin.name, start)


class PluginRunner(Callback):
    """Attaches each plugin's hooks to its selected modules on the steps where it is active.

    Per plugin, on training batches of an active optimizer step (``global_step % every_n_steps == 0``),
    the overridden hook kinds are registered on the selected modules; on other steps no hook is
    attached at all. When an active optimizer step completes, the recorded statistics are averaged
    over ranks and folded into the plugin's buffers (``plugin_state.<name>`` under the
    LightningModule); on its logging steps rank 0 logs them as ``<plugin>/<stat>/<module>``, with
    one device-to-host copy for all plugins. Every handle is removed on teardown and on error.

    Args:
        plugins: the plugins, with distinct names.

    Raises:
        HooktrainError: two plugins share a name, or a selection matches nothing (at ``setup``).
    """

    def __init__(self, plugins: list[HookPlugin]) -> None:
        names = [plugin.name for plugin in plugins]
        if len(set(names)) != len(names):
            raise HooktrainError(f"plugin names must be distinct, got {names}")
        for name in names:  # plugin state lives in an nn.ModuleDict, under the plugin's name
            if hasattr(nn.ModuleDict, name):
                raise HooktrainError(f"plugin name {name!r} is an attribute of torch.nn.Module; rename the plugin's file and config")
        self.plugins = plugins
        self.info = StepInfo()
        self._stats: dict[str, StepStats] = {}
        self._contexts: dict[str, list[tuple[nn.Module, HookContext]]] = {}
        self._handles: dict[str, list[RemovableHandle]] = {}
        self._layout_written = False

    # Attaching and detaching.

    def attach(self, plugin: HookPlugin) -> None:
        """Registers the plugin's hooks on its modules; all or nothing."""
        handles = []
        try:
            for module, ctx in self._contexts[plugin.name]:
                for kind in plugin.hook_kinds():
                    handles.append(_REGISTER[kind](module, _Hook(plugin, kind, ctx)))
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        self._handles[plugin.name] = handles

    def detach(self, plugin: HookPlugin) -> None:
        for handle in self._handles.pop(plugin.name, []):
            handle.remove()
        self._stats[plugin.name].clear()

    def is_attached(self, plugin: HookPlugin) -> bool:
        return plugin.name in self._handles

    def detach_all(self) -> None:
        for plugin in self.plugins:
            if self.is_attached(plugin):
                self.detach(plugin)

    # Lightning hooks.

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Selects modules and creates plugin state (before Lightning restores a checkpoint into it)."""
        if self._contexts:
            return
        model = getattr(pl_module, "model", pl_module)
        if not hasattr(pl_module, "plugin_state"):
            pl_module.plugin_state = nn.ModuleDict()
        hook_map: dict[str, list[str]] = {}  # module name -> "plugin: hook kinds (cadence)"
        for plugin in self.plugins:
            plugin.info = self.info
            selected = select_modules(model, plugin.targets, plugin.types, f"plugins.{plugin.name}")
            names = [name for name, _ in selected]
            stats = self._stats[plugin.name] = StepStats(len(selected))
            self._contexts[plugin.name] = [
                (module, HookContext(name, index, stats, self.info)) for index, (name, module) in enumerate(selected)
            ]
            if plugin.name not in pl_module.plugin_state:
                state = nn.Module()
                plugin.setup(state, dict(selected))
                pl_module.plugin_state[plugin.name] = state
            kinds = ", ".join(plugin.hook_kinds() + [method for method in _STEP_METHODS if plugin.overrides(method)]) or "update only"
            for name in names:
                hook_map.setdefault(name, []).append(f"{plugin.name}: {kinds} (every {plugin.every_n_steps} steps)")
        _print_hook_map(hook_map)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.info.total_steps = trainer.estimated_stepping_batches

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.info.step = trainer.global_step
        self.info.scaler = getattr(trainer.precision_plugin, "scaler", None)
        for plugin in self.plugins:
            active = plugin.is_active(self.info.step)
            if active != self.is_attached(plugin):
                self.attach(plugin) if active else self.detach(plugin)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._handles:
            self._call_per_module("before_optimizer_step")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._handles or trainer.global_step == self.info.step:
            return  # idle step, or gradient accumulation: the optimizer step is not complete yet
        self._call_per_module("after_optimizer_step")
        active = [plugin for plugin in self.plugins if self.is_attached(plugin)]
        if active:
            self.flush(trainer, pl_module, active)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach_all()  # plugins watch training steps; evaluation must not feed their statistics

    on_test_start = on_predict_start = on_validation_start

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.detach_all()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.detach_all()
        self.info.scaler = None

    def _call_per_module(self, method: str) -> None:
        for plugin in self.plugins:
            if self.is_attached(plugin) and plugin.overrides(method):
                for module, ctx in self._contexts[plugin.name]:
                    _Hook(plugin, method, ctx)(module)

    # Flushing: reduce over ranks, update buffers, log on logging steps with one host copy.

    def flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule, plugins: list[HookPlugin]) -> None:
        """Averages the step's statistics over ranks, lets plugins update buffers, logs on rank 0."""
        recorded = {plugin.name: self._stats[plugin.name].means() for plugin in plugins}
        if trainer.world_size > 1:
            self._reduce(trainer, recorded)
        logged: list[tuple[str, str, Tensor, list[bool]]] = []
        logging_now = [plugin for plugin in plugins if plugin.is_logging(self.info.step)]
        for plugin in plugins:
            stats = self._stats[plugin.name]
            means = recorded[plugin.name]
            start = time.perf_counter()
            try:
                extra = plugin.update(pl_module.plugin_state[plugin.name], means)
            except HooktrainError:
                raise  # a plugin's own verdict, such as nan_guard's, reads as it is
            except Exception as error:
                raise PluginHookError(f"plugin {plugin.name!r} failed in its update: {type(error).__name__}: {error}") from error
            self.info.charge(plugin.name, start)
            if plugin in logging_now:
                logged += [(plugin.name, stat, values, stats.recorded(stat)) for stat, values in means.items()]
                logged += [(plugin.name, stat, values, [True] * (len(values) if values.dim() else 1)) for stat, values in extra.items()]
        if trainer.is_global_zero and logged:
            self._log(trainer, logging_now, logged)
        for plugin in plugins:
            self._stats[plugin.name].clear()
        self.info.seconds.clear()

    @staticmethod
    def _reduce(trainer: pl.Trainer, recorded: dict[str, dict[str, Tensor]]) -> None:
        """One all-reduce (mean) for every statistic of every plugin, written back in place of the local values."""
        keys = [(name, stat) for name, means in recorded.items() for stat in means]
        if not keys:
            return
        tensors = [recorded[name][stat] for name, stat in keys]
        device = trainer.strategy.root_device  # host-side values (timings) join the device ones
        flat = trainer.strategy.reduce(torch.cat([tensor.flatten().to(device) for tensor in tensors]), reduce_op="mean")
        for (name, stat), tensor, part in zip(keys, tensors, flat.split([t.numel() for t in tensors])):
            recorded[name][stat] = part.view_as(tensor)

    def _log(self, trainer: pl.Trainer, plugins: list[HookPlugin], logged: list[tuple[str, str, Tensor, list[bool]]]) -> None:
        """Rank 0: scalars to every logger; histograms, images and the custom-scalars layout to TensorBoard.

        A statistic of shape ``()`` is one scalar for the plugin, ``(num_modules,)`` a scalar per
        module, ``(num_modules, H, W)`` or ``(num_modules, 3, H, W)`` a gray or RGB image per module
        with values in [0, 1]; other shapes are the plugin's own business.
        """
        logged = [entry for entry in logged if entry[2].dim() in (0, 1, 3, 4)]
        histograms = [
            (self._tag(plugin.name, stat, index), summary)
            for plugin in plugins
            for (stat, index), summary in self._stats[plugin.name].histograms.items()
        ]
        parts = [values.detach().float().flatten() for _, _, values, _ in logged] + [summary for _, summary in histograms]
        # Gathered on the accelerator (host-side timings join it), then one copy to the host.
        device = next((part.device for part in parts if part.device.type != "cpu"), torch.device("cpu"))
        host = torch.cat([part.to(device, non_blocking=True) for part in parts]).cpu() if parts else torch.empty(0)
        numbers = host.tolist()
        step, position = self.info.step, 0
        # Host time in each plugin's hooks and update this step (on a GPU: launch time, not kernel time).
        metrics = {f"plugin/overhead_ms/{name}": 1000 * spent for name, spent in self.info.seconds.items()}
        images: list[tuple[str, Tensor]] = []
        for plugin_name, stat, values, present in logged:
            start, position = position, position + values.numel()
            if values.dim() == 0:  # one value for the whole plugin
                metrics[f"{plugin_name}/{stat}"] = numbers[start]
                continue
            chunk = host[start:position].view(values.shape)
            for index, keep in enumerate(present):
                if not keep:
                    continue
                if values.dim() == 1:
                    metrics[self._tag(plugin_name, stat, index)] = numbers[start + index]
                else:
                    images.append((self._tag(plugin_name, stat, index), chunk[index]))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                _write_scalars(logger, metrics, step)
            else:
                logger.log_metrics(metrics, step=step)
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        for tag, summary in histograms:
            low, high, count, total, squares, *counts = numbers[position : position + len(summary)]
            position += len(summary)
            width = (high - low) / len(counts)
            limits = [low + width * (i + 1) for i in range(len(counts))]
            for writer in writers:
                writer.add_histogram_raw(tag, low, high, count, total, squares, limits, counts, global_step=step)
        for tag, image in images:
            for writer in writers:
                writer.add_image(tag, image, global_step=step, dataformats="CHW" if image.dim() == 3 else "HW")
        if writers and not self._layout_written and len(plugins) == len(self.plugins):
            layout: dict[str, dict[str, list]] = {"plugin": {"overhead_ms": ["Multiline", [r"^plugin/overhead_ms/"]]}}
            for plugin_name, stat, values, _ in logged:
                if values.dim() == 1:
                    layout.setdefault(plugin_name, {})[stat] = ["Multiline", [rf"^{plugin_name}/{stat}/"]]
            for writer in writers:
                writer.add_custom_scalars(layout)
            self._layout_written = True

    def _tag(self, plugin_name: str, stat: str, index: int) -> str:
        return f"{plugin_name}/{stat}/{self._contexts[plugin_name][index][1].module_name}"


def _write_scalars(logger: TensorBoardLogger, metrics: dict[str, float], step: int) -> None:
    """All of a step's scalars as one TensorBoard event.

    ``log_metrics`` writes an event per scalar; a hundred of them fill the writer's queue (10 by
    default) and training then waits for its thread: a LeNet logging step took 20 ms, 11 ms as one event.
    """
    prefix = f"{logger._prefix}{logger.LOGGER_JOIN_CHAR}" if logger._prefix else ""
    values = [Summary.Value(tag=prefix + tag, simple_value=value) for tag, value in metrics.items()]
    logger.experiment._get_file_writer().add_summary(Summary(value=values), step)


def _print_hook_map(hook_map: dict[str, list[str]]) -> None:
    """Rank 0 prints which plugin hooks which module, one line per pair, before training starts."""
    if not hook_map:
        return
    width = max(map(len, hook_map))
    lines = [f"  {name if i == 0 else '':<{width}}  {entry}" for name, entries in hook_map.items() for i, entry in enumerate(entries)]
    rank_zero_info("hook map (module  plugin: hooks):\n" + "\n".join(lines))
