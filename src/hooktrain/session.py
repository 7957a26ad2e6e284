"""HookSession: runs hook plugins on a model inside any PyTorch loop; the engines only tell it the step and phase."""

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hooktrain.errors import HooktrainError, PluginHookError
from hooktrain.figures import layer_picture, to_image
from hooktrain.plugin import PHASES, STEP_METHODS, HookContext, HookPlugin, StepInfo
from hooktrain.select import module_names, select_modules
from hooktrain.stats import AllReduce, StepStats, append_column_
from hooktrain.writers import Writer

log = logging.getLogger(__name__)

# The first layer's input needs no gradient, so its full backward hook gets grad_input of Nones and
# PyTorch warns once. Expected: plugins read grad_output for "the gradient at this layer".
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs")

_UNCOMPILABLE = ("backward_pre", "backward")  # full backward hooks: torch.compile then runs the whole model eagerly
PICTURE_COLUMNS = 100  # logging steps a layer picture shows (the last ones)
DRAWS_PER_FIT = 4  # a picture holds every logging step so far: a few drawings a fit tell the story, and each costs ~0.1 s
DRAW_INTERVAL_S = 60.0  # and at least this long apart, and DRAW_SHARE: a fit of a minute draws once, at its end
DRAW_SHARE = 0.02  # the most of a fit's time that drawing takes before its end (the next waits 50x the last one's time)
_clock = time.monotonic  # the drawings' clock (a test's fake one in its place)
TAG_ROOT = "watch"  # every plugin tag starts here: TensorBoard orders groups by name, so train/, val/ and test/ come first


class _Gate:
    """Whether a plugin's hooks act now. Eager runs attach hooks only while active; compiled runs keep them and close the gate."""

    def __init__(self) -> None:
        self.open = True


class _Hook:
    """One call into a plugin on one module: passes its context, counts and times it, and names the culprit on error.

    A plain object with bound methods, not a closure, so a model with hooks attached still pickles.
    Under torch.compile only the gate check is traced: the plugin's own code runs eagerly behind a
    graph break (``torch.compiler.disable``), so dynamo guards on no plugin state and an idle step
    is one graph.
    """

    def __init__(self, plugin: HookPlugin, kind: str, module: nn.Module, ctx: HookContext, gate: _Gate, compiled: bool = False) -> None:
        self.plugin, self.kind, self.module, self.ctx, self.gate, self.compiled = plugin, kind, module, ctx, gate, compiled
        self.calls = 0  # the module's forward calls seen (for the hook map)
        self._method = getattr(plugin, kind)  # looked up once: a hook runs several times a step
        self._run = _eager(self._call) if compiled else self._call

    def __call__(self, module: nn.Module, *args: Any) -> Any:
        if not self.gate.open:
            return None
        return self._run(module, *args)

    def grad_hook(self, grad: Tensor) -> Tensor | None:
        """The tensor hook :class:`_OutputGradHook` puts on the module's output (no ``partial`` made per forward)."""
        if not self.gate.open:
            return None
        return self._run(self.module, grad)

    def _call(self, module: nn.Module, *args: Any) -> Any:
        if self.kind != "output_grad":  # counted at the forward, by _OutputGradHook
            self.calls += 1
        start = time.perf_counter()
        try:
            return self._method(self.ctx, module, *args)
        except (PluginHookError, HooktrainError):
            raise  # a plugin's own verdict on its input (activation_cache's byte limit) reads as it is
        except Exception as error:
            where = f"at step {self.ctx.step}" if self.ctx.phase == "train" else f"in {self.ctx.phase} after step {self.ctx.step}"
            raise PluginHookError(
                f"plugin {self.plugin.name!r} failed {where} in its {self.kind} hook on module "
                f"{self.ctx.module_name!r}: {type(error).__name__}: {error}"
            ) from error
        finally:
            self.ctx.info.charge(self.plugin.name, start)


class _OutputGradHook:
    """A forward hook that puts the plugin's ``output_grad`` hook on the module's output tensor."""

    def __init__(self, hook: _Hook, compiled: bool = False) -> None:
        self.hook = hook
        self._run = _eager(self._register) if compiled else self._register

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.hook.gate.open:
            self._run(output)

    def _register(self, output: Any) -> None:
        self.hook.calls += 1
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(self.hook.grad_hook)


def _eager(function: Any) -> Any:
    """``function`` run outside torch.compile's tracing."""
    return torch.compiler.disable(function, recursive=True)


# Entered from eager code (after an active step's graph break), a hook's gate check is no frame worth
# compiling: dynamo would compile it once per module and shape until its recompile limit, and warn.
# Inside a traced model it is still inlined, so an idle step stays one graph.
for _code in (_Hook.__call__.__code__, _Hook.grad_hook.__code__, _OutputGradHook.__call__.__code__):
    torch._dynamo.eval_frame.skip_code(_code)


def _register_output_grad_hook(module: nn.Module, hook: _Hook) -> RemovableHandle:
    return module.register_forward_hook(_OutputGradHook(hook, compiled=hook.compiled))


_REGISTER = {
    "forward_pre": nn.Module.register_forward_pre_hook,
    "forward": nn.Module.register_forward_hook,
    "backward_pre": nn.Module.register_full_backward_pre_hook,
    "backward": nn.Module.register_full_backward_hook,
    "output_grad": _register_output_grad_hook,
}


class HookSession:
    """Runs plugins on ``model`` in any loop: selection, hooks per step and phase, statistics, state, writing.

    Per plugin, on the training steps where it is active (``step % every_n_steps == 0``) and in the
    evaluation phases it is given, the overridden hook kinds are registered on its selected modules;
    on its idle steps no hook of it is attached (an active step's hooks stay, closed, until the next
    step starts, so a plugin active on every step is attached once). When an active step finishes,
    what the hooks recorded is combined (over calls and processes), folded into the plugin's buffers
    (``state[name]``) and, on logging steps, written by the process of rank 0 with one device-to-host
    copy for all plugins. An evaluation phase is written once, when it finishes. Every handle goes on ``close``.

    A plain loop::

        with HookSession(model, [GradLogger(name="grad_logger")], writers=[TensorBoardWriter("runs/demo")]) as session:
            for step, (x, y) in enumerate(loader):
                with session.step(step):
                    F.cross_entropy(model(x), y).backward()
                    session.before_optimizer_step()
                    optimizer.step()
                    optimizer.zero_grad()

    Args:
        model: the module whose submodules the plugins hook.
        plugins: the plugins, with distinct names.
        writers: where statistics go (only the process of rank 0 writes).
        compiled: the model will run under ``torch.compile``: hooks are attached once, at ``setup``
            (before compilation), and gated per step instead of attached per step.
        all_reduce: ``all_reduce(tensor, "sum" | "max")`` over processes; default: ``torch.distributed``
            when a process group of more than one process is initialized.

    Raises:
        HooktrainError: two plugins share a name, a selection matches nothing, or a plugin cannot run compiled.
    """

    def __init__(
        self,
        model: nn.Module,
        plugins: Sequence[HookPlugin],
        writers: Sequence[Writer] = (),
        *,
        compiled: bool = False,
        all_reduce: AllReduce | None = None,
    ) -> None:
        check_plugins(plugins, compiled)
        names = [plugin.name for plugin in plugins]
        self.model, self.plugins, self.writers, self.compiled = model, list(plugins), list(writers), compiled
        self.info = StepInfo()
        self.state = nn.ModuleDict()  # plugin name -> its buffers; register it on a LightningModule to checkpoint it
        self.state.register_load_state_dict_pre_hook(_fit_other_plugins)
        self._all_reduce = all_reduce
        self._contexts: dict[str, list[tuple[nn.Module, HookContext]]] = {}
        self._stats: dict[str, StepStats] = {}
        self._hooks: dict[str, list[_Hook]] = {}  # registered on modules
        self._step_calls: dict[str, list[_Hook]] = {}  # called per module by before/after_optimizer_step
        self._kinds: dict[str, list[str]] = {}  # each plugin's hook_kinds()
        self._handles: dict[str, list[RemovableHandle]] = {}
        self._gates = {name: _Gate() for name in names}
        self._active: set[str] = set()
        self._step_open = False
        self._layout: dict[str, dict[str, list]] = {}  # custom-scalars charts so far: plugin -> statistic -> chart
        self.run_charts: dict[str, list] = {}  # the run's own charts, first in the layout (the engines: loss, accuracy, lr)
        self._first_calls: dict[int, int] | None = None  # each hooked module's calls in the first step or phase written
        self._step_started = 0.0
        self._train_seconds = 0.0  # training step time (batch start to optimizer step done), summed over steps
        self._train_seconds_at_log: dict[str, float] = {}  # its value at each plugin's last logging step
        self._plugin_seconds: dict[str, float] = {}  # each plugin's host time since its last logging step
        self._logged_step: int | None = None  # the last training step written, and the one the last drawing showed
        self._drawn_step: int | None = None
        self._drawn_at = _clock()  # when the last drawing ended (the session's start before any), and what it took
        self._draw_seconds = 0.0
        for plugin in self.plugins:
            plugin.info = self.info

    # Set-up and clean-up.

    def setup(self) -> "HookSession":
        """Selects modules and creates each plugin's state (call it before loading a checkpoint into ``state``); once."""
        if self._contexts:
            return self
        for plugin in self.plugins:
            selected = select_modules(self.model, plugin.targets, plugin.types, f"plugins.{plugin.name}", plugin.default_types)
            if plugin.name not in self.state:
                state = nn.Module()
                plugin.setup(state, dict(selected))
                if plugin.layer_pictures:
                    state.by_layer = _layer_history(plugin.layer_pictures, len(selected))
                self.state[plugin.name] = state
            stats = self._stats[plugin.name] = StepStats(len(selected), plugin.name)
            self._contexts[plugin.name] = [
                (module, HookContext(name, index, stats, self.info, self.state[plugin.name])) for index, (name, module) in enumerate(selected)
            ]
            gate = self._gates[plugin.name]
            self._kinds[plugin.name] = plugin.hook_kinds()
            hooks = [
                _Hook(plugin, kind, module, ctx, gate, compiled=self.compiled and kind not in STEP_METHODS)
                for module, ctx in self._contexts[plugin.name]
                for kind in self._kinds[plugin.name]
                if kind != "gradients_ready"
            ]
            self._hooks[plugin.name] = [hook for hook in hooks if hook.kind not in STEP_METHODS]
            self._step_calls[plugin.name] = [hook for hook in hooks if hook.kind in STEP_METHODS]
        if self.compiled:  # in place before torch.compile traces the model; closed until a step opens them
            for plugin in self.plugins:
                self.attach(plugin)
                self._gates[plugin.name].open = False
        return self

    def close(self, draw: bool = True) -> None:
        """Removes every hook of every plugin, draws the last pictures (``draw``) and flushes the writers; a later step or
        phase attaches the hooks again (the Trainer tests after its fit's teardown). Engines pass ``draw=False`` on an error."""
        self.detach_all()
        self._active.clear()
        self._step_open = False
        if draw:
            self.draw(final=True)
        for writer in self.writers:
            writer.flush()

    def __enter__(self) -> "HookSession":
        return self.setup()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Attaching and detaching.

    def attach(self, plugin: HookPlugin) -> None:
        """Registers the plugin's hooks on its modules, all or nothing; attached already, it does nothing."""
        if self.is_attached(plugin):
            return
        handles = []
        try:
            for hook in self._hooks[plugin.name]:
                handles.append(_REGISTER[hook.kind](hook.module, hook))
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        self._handles[plugin.name] = handles

    def detach(self, plugin: HookPlugin) -> None:
        for handle in self._handles.pop(plugin.name, []):
            handle.remove()

    def is_attached(self, plugin: HookPlugin) -> bool:
        return plugin.name in self._handles

    def detach_all(self) -> None:
        for plugin in self.plugins:
            self.detach(plugin)

    # What the engine tells the session.

    def start_step(self, step: int) -> None:
        """A training batch of optimizer step ``step`` starts (micro-batches of one step pass the same number)."""
        if self._step_open and step == self.info.step and self.info.phase == "train":
            return
        self.info.step, self.info.phase, self._step_open = step, "train", True
        self._step_started = time.perf_counter()
        due = {plugin.name for plugin in self.plugins if plugin.is_active(step, "train")}
        if due or self._active or (self._handles and not self.compiled):  # an idle step after an idle step: nothing to do
            self._clear()
            self._activate(due)

    def before_optimizer_step(self) -> None:
        """The step's gradients are final (and unscaled): the active plugins' ``before_optimizer_step`` per module, then
        their ``gradients_ready``."""
        if not self._active:
            return
        self._call_per_module("before_optimizer_step")
        for plugin in self.plugins:
            if plugin.name in self._active and "gradients_ready" in self._kinds[plugin.name]:
                self._run_plugin(plugin, "gradients_ready")

    def finish_step(self) -> None:
        """The optimizer step is done: ``after_optimizer_step``, then statistics into buffers and, on logging steps, to the writers."""
        if not self._step_open:
            return
        self._step_open = False
        self._train_seconds += time.perf_counter() - self._step_started
        if not self._active:
            return
        self._call_per_module("after_optimizer_step")
        active = [plugin for plugin in self.plugins if plugin.name in self._active]
        self._close_gates()  # hooks stay until the next step: one active on every step is attached once, not per step
        self._flush(active, train=True)

    def start_phase(self, phase: str) -> None:
        """An evaluation phase (``validate``, ``test``, ``predict``) starts: plugins given that phase act on every batch."""
        if phase not in PHASES[1:]:
            raise HooktrainError(f"phase must be one of {list(PHASES[1:])}, got {phase!r}")
        self._step_open = False
        self.info.phase = phase
        self._clear()
        self._activate({plugin.name for plugin in self.plugins if plugin.is_active(self.info.step, phase)})

    def finish_phase(self, write: bool = True) -> dict[str, float]:
        """The evaluation phase is over: each plugin's ``end_phase``, then its statistics (over all its batches) are
        written once; buffers stay as they are. Returns the scalars written, ``watch/<plugin>/<phase>/<stat>/<module>``."""
        active = [plugin for plugin in self.plugins if plugin.name in self._active]
        self._activate(set())
        scalars = self._flush(active, train=False) if active and write else {}
        self._clear()
        self.info.phase = "train"
        return scalars

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """``start_step(step)`` ... ``finish_step()``, around one optimizer step of a plain loop."""
        self.start_step(step)
        yield
        self.finish_step()

    @contextmanager
    def evaluating(self, phase: str = "validate") -> Iterator[None]:
        """``start_phase(phase)`` ... ``finish_phase()``, around an evaluation loop."""
        self.start_phase(phase)
        yield
        self.finish_phase()

    def draw(self, final: bool = False) -> None:
        """Draws every plugin's pictures into the writers (rank 0): its ``layer_pictures`` and what its ``draw`` returns.

        A picture shows every logging step so far, so engines call this at each training epoch's end and it draws
        when ``1 / DRAWS_PER_FIT`` of the fit's steps (``info.total_steps``; unknown: every call) and ``DRAW_INTERVAL_S``
        passed since its last drawing, and 50 times (``1 / DRAW_SHARE``) what that drawing took, or when ``final``
        (``close``); only if a training step was written since, and a writer shows images.
        """
        if self._logged_step is None or self._logged_step == self._drawn_step or not _is_writer():
            return
        if not any(type(writer).write_image is not Writer.write_image for writer in self.writers):
            return
        every = self.info.total_steps / DRAWS_PER_FIT
        if not final and math.isfinite(every) and self.info.step < (self._drawn_step or 0) + every:
            return
        if not final and _clock() - self._drawn_at < max(DRAW_INTERVAL_S, self._draw_seconds / DRAW_SHARE):
            return
        started = _clock()
        for plugin in self.plugins:
            state = self.state[plugin.name]
            try:
                figures = {**plugin.draw(state), **self._layer_pictures(plugin, state)}
            except HooktrainError:
                raise
            except Exception as error:
                raise PluginHookError(f"plugin {plugin.name!r} failed drawing its pictures: {type(error).__name__}: {error}") from error
            for name in list(figures):  # each image written as it is drawn: one at a time in memory (3 MB each), not all 13-30
                self._write_image(f"{TAG_ROOT}/{plugin.name}/{name}", to_image(figures.pop(name)))
        self._drawn_step = self._logged_step
        self._drawn_at = _clock()
        self._draw_seconds = self._drawn_at - started

    def _write_image(self, tag: str, image: Tensor) -> None:
        for writer in self.writers:
            writer.write_image(tag, image, self._logged_step)

    # The exported model.

    def export_state_dict(self) -> tuple[dict[str, Tensor], list[str]]:
        """The model's weights as its plugins export them (pruning made permanent), and the names of the
        plugins that change the tested model's forward in a way the weights cannot hold."""
        state = self.model.state_dict()
        not_in_weights = []
        for plugin in self.plugins:
            exported = plugin.export(state)
            if exported is None:
                if "test" in plugin.phases:
                    not_in_weights.append(plugin.name)
            else:
                state = exported
        return state, not_in_weights

    # Inside.

    def _activate(self, due: set[str]) -> None:
        """Attaches and opens the plugins named in ``due``; closes the others, and detaches them unless compiled."""
        for plugin in self.plugins:
            active = plugin.name in due
            if active:
                self._active.add(plugin.name)
                self.attach(plugin)  # compiled: attached for good (again after close: dynamo then recompiles once)
            else:
                self._active.discard(plugin.name)
                if not self.compiled:
                    self.detach(plugin)
            self._gates[plugin.name].open = active

    def _close_gates(self) -> None:
        """The step is over: the active plugins' hooks stay attached but do nothing until ``_activate`` decides."""
        for name in self._active:
            self._gates[name].open = False
        self._active.clear()

    def _clear(self) -> None:
        for stats in self._stats.values():
            stats.clear()
        for hooks in self._hooks.values():
            for hook in hooks:
                hook.calls = 0
        self.info.seconds.clear()

    def _call_per_module(self, method: str) -> None:
        for plugin in self.plugins:
            if plugin.name in self._active:
                for hook in self._step_calls[plugin.name]:
                    if hook.kind == method:
                        hook(hook.module)

    def _run_plugin(self, plugin: HookPlugin, method: str, *args: Any) -> Any:
        """``plugin.<method>(*args)``, charged to the plugin's time; an error names the plugin, the method and the step or phase."""
        start = time.perf_counter()
        try:
            return getattr(plugin, method)(*args)
        except HooktrainError:
            raise  # a plugin's own verdict, such as nan_guard's, reads as it is
        except Exception as error:
            where = f"at step {self.info.step} in its {method}" if self.info.phase == "train" else f"at the end of {self.info.phase}"
            raise PluginHookError(f"plugin {plugin.name!r} failed {where}: {type(error).__name__}: {error}") from error
        finally:
            self.info.charge(plugin.name, start)

    def _flush(self, plugins: list[HookPlugin], train: bool) -> dict[str, float]:
        """Combines the statistics over calls and processes; in training folds them into buffers; writes on logging steps.
        Returns the scalars written."""
        all_reduce = self._all_reduce or _default_all_reduce()
        writing = [plugin for plugin in plugins if not train or plugin.is_logging(self.info.step)]
        logged: list[tuple[str, str, Tensor, list[bool]]] = []
        for plugin in plugins:
            stats = self._stats[plugin.name]
            combined = stats.combined(all_reduce)
            if train:
                extra = self._run_plugin(plugin, "update", self.state[plugin.name], combined)
                self._plugin_seconds[plugin.name] = self._plugin_seconds.get(plugin.name, 0.0) + self.info.seconds.get(plugin.name, 0.0)
            else:
                extra = self._run_plugin(plugin, "end_phase", combined)
            if plugin in writing:
                if train:
                    self._remember(plugin, {**combined, **extra})
                logged += [(plugin.name, stat, values, stats.recorded(stat)) for stat, values in combined.items() if stat[0] != "_"]
                logged += [(plugin.name, stat, values, [True] * (len(values) if values.dim() else 1)) for stat, values in extra.items()]
        if self._first_calls is None:
            self._first_calls = self._call_counts()
            if _is_writer():
                log.info("hook map (module, its calls in this first %s, plugin: hooks):\n%s", "step" if train else "phase", self.hook_map())
        scalars = self._write(writing, logged, train) if writing and self.writers and _is_writer() else {}
        self._clear()
        return scalars

    def _write(self, plugins: list[HookPlugin], logged: list[tuple[str, str, Tensor, list[bool]]], train: bool) -> dict[str, float]:
        """Rank 0: scalars, histograms, images and (when it grows) the custom-scalars layout, from one host copy.

        A statistic of shape ``()`` is one scalar for the plugin, ``(num_modules,)`` a scalar per
        module, ``(num_modules, H, W)`` or ``(num_modules, 3, H, W)`` a gray or RGB image per module
        with values in [0, 1]; other shapes are the plugin's own business.
        """
        phase = "" if train else f"{self.info.phase}/"
        # Scalars first, pictures last: only the numbers before the pictures become Python floats (``tolist``).
        logged = sorted((entry for entry in logged if entry[2].dim() in (0, 1, 3, 4)), key=lambda entry: entry[2].dim() > 1)
        histograms = [
            (self._tag(plugin.name, phase + stat, index), summary)
            for plugin in plugins
            for (stat, index), summary in self._stats[plugin.name].histograms.items()
        ]
        pictures = [values.detach().float().flatten() for _, _, values, _ in logged if values.dim() > 1]
        numeric = [values.detach().float().flatten() for _, _, values, _ in logged if values.dim() <= 1]
        parts = numeric + [summary for _, summary in histograms] + pictures
        # Gathered on the accelerator (host-side timings join it), then one copy to the host.
        device = next((part.device for part in parts if part.device.type != "cpu"), torch.device("cpu"))
        host = torch.cat([part.to(device, non_blocking=True) for part in parts]).cpu() if parts else torch.empty(0)
        numbers = host[: len(host) - sum(part.numel() for part in pictures)].tolist()
        step, position = self.info.step, 0
        scalars = self._overhead_shares(plugins) if train else {}
        images: list[tuple[str, Tensor]] = []
        summaries = []
        for plugin_name, stat, values, present in logged:
            if values.dim() > 1:
                continue
            start, position = position, position + values.numel()
            if values.dim() == 0:  # one value for the whole plugin
                scalars[f"{TAG_ROOT}/{plugin_name}/{phase}{stat}"] = numbers[start]
                continue
            for index, keep in enumerate(present):
                if keep:
                    scalars[self._tag(plugin_name, phase + stat, index)] = numbers[start + index]
        for tag, summary in histograms:
            summaries.append((tag, numbers[position : position + len(summary)]))
            position += len(summary)
        for plugin_name, stat, values, present in logged:
            if values.dim() <= 1:
                continue
            start, position = position, position + values.numel()
            chunk = host[start:position].view(values.shape)
            images += [(self._tag(plugin_name, phase + stat, index), chunk[index]) for index, keep in enumerate(present) if keep]
        for writer in self.writers:
            writer.write_scalars(scalars, step)
            for tag, summary in summaries:
                writer.write_histogram(tag, summary, step)
            for tag, image in images:
                writer.write_image(tag, image, step)
        grown = False
        for name, stat, values, _ in logged if train else ():
            if values.dim() == 1 and stat not in self._layout.get(name, {}):
                self._layout.setdefault(name, {})[stat] = ["Multiline", [rf"^{TAG_ROOT}/{name}/{stat}/"]]
                grown = True
        if grown:  # a plugin's first logging step: the layout grows (TensorBoard shows the last one written)
            layout = {"run": self.run_charts} if self.run_charts else {}
            layout["plugin"] = {"overhead_share": ["Multiline", [rf"^{TAG_ROOT}/overhead_share/"]]}
            layout |= {plugin.name: self._layout[plugin.name] for plugin in self.plugins if plugin.name in self._layout}
            for writer in self.writers:
                writer.write_layout(layout)
        if train:
            self._logged_step = step
        return scalars

    def _overhead_shares(self, plugins: list[HookPlugin]) -> dict[str, float]:
        """``watch/overhead_share/<plugin>``: each plugin's host time (hooks, update) over the training step time since its
        last logging step; a busy machine slows both alike. On a GPU, host time is launch time, not kernel time."""
        shares = {}
        for plugin in plugins:
            spent = self._plugin_seconds.pop(plugin.name, 0.0)
            since = self._train_seconds - self._train_seconds_at_log.get(plugin.name, self._train_seconds)
            if since > 0:
                shares[f"{TAG_ROOT}/overhead_share/{plugin.name}"] = spent / since
            self._train_seconds_at_log[plugin.name] = self._train_seconds
        return shares

    def _remember(self, plugin: HookPlugin, stats: dict[str, Tensor]) -> None:
        """A logging step's column of each ``layer_pictures`` statistic, into ``state.by_layer`` (newest on the right); no host sync."""
        history = getattr(self.state[plugin.name], "by_layer", None)
        if history is None:
            return
        append_column_(history.steps, self.info.step)
        for stat in plugin.layer_pictures:
            values, column = history.get_buffer(stat), stats.get(stat)
            append_column_(values, column.to(values.device) if column is not None and column.shape == values.shape[:1] else float("nan"))

    def _layer_pictures(self, plugin: HookPlugin, state: nn.Module) -> dict[str, Any]:
        """One figure per ``layer_pictures`` statistic that holds a value: every layer against the logging steps."""
        history = getattr(state, "by_layer", None)
        if history is None:
            return {}
        steps = history.steps.cpu()
        if not (filled := steps >= 0).any():
            return {}
        steps = steps[filled].numpy()
        layers = [ctx.module_name for _, ctx in self._contexts[plugin.name]]
        pictures = {}
        for stat in plugin.layer_pictures:
            values = history.get_buffer(stat).cpu()[:, filled]
            if values.isfinite().any():
                pictures[f"by_layer/{stat}"] = layer_picture(f"{plugin.name}/{stat}", values.numpy(), steps, layers)
        return pictures

    def _tag(self, plugin_name: str, stat: str, index: int) -> str:
        return f"{TAG_ROOT}/{plugin_name}/{stat}/{self._contexts[plugin_name][index][1].module_name}"

    def _call_counts(self) -> dict[int, int]:
        calls: dict[int, int] = {}
        for hooks in self._hooks.values():
            for hook in hooks:
                calls[id(hook.module)] = max(calls.get(id(hook.module), 0), hook.calls)
        return calls

    def hook_map(self) -> str:
        """Which plugin hooks which module, in the model's order; ``xN``: the module's calls in the first step (or phase) written."""
        calls = self._first_calls if self._first_calls is not None else self._call_counts()
        entries: dict[int, list[str]] = {}
        for plugin in self.plugins:
            kinds = ", ".join(plugin.hook_kinds()) or "update only"
            cadence = f"every {plugin.every_n_steps} steps" + ("" if plugin.phases == ("train",) else f"; {', '.join(plugin.phases)}")
            for module, _ in self._contexts[plugin.name]:
                entries.setdefault(id(module), []).append(f"{plugin.name}: {kinds} ({cadence})")
        labels = {}
        for module_id, names in module_names(self.model).items():
            if module_id in entries:
                also = f" (also {', '.join(names[1:])})" if len(names) > 1 else ""
                labels[module_id] = f"{names[0]}{also}  " + (f"x{calls[module_id]}" if module_id in calls else "")
        width = max(map(len, labels.values()), default=0)
        return "\n".join(
            f"  {labels[module_id] if i == 0 else '':<{width}}  {entry}" for module_id in labels for i, entry in enumerate(entries[module_id])
        )


def _layer_history(stats: Sequence[str], num_modules: int) -> nn.Module:
    """Buffers for a plugin's layer pictures: the logging steps (-1: none yet) and each statistic per module (NaN: none)."""
    history = nn.Module()
    history.register_buffer("steps", torch.full((PICTURE_COLUMNS,), -1, dtype=torch.long))
    for stat in stats:
        history.register_buffer(stat, torch.full((num_modules, PICTURE_COLUMNS), float("nan")))
    return history


def check_plugins(plugins: Sequence[HookPlugin], compiled: bool = False) -> None:
    """Distinct names that ``nn.ModuleDict`` can hold; under ``compiled``, no full backward hooks.

    Raises:
        HooktrainError: naming the plugin and what to change.
    """
    names = [plugin.name for plugin in plugins]
    if len(set(names)) != len(names):
        raise HooktrainError(f"plugin names must be distinct, got {names}")
    for name in names:  # plugin state lives in an nn.ModuleDict, under the plugin's name
        if hasattr(nn.ModuleDict, name):
            raise HooktrainError(f"plugin name {name!r} is an attribute of torch.nn.Module; rename the plugin's file and config")
    for plugin in plugins if compiled else ():
        kinds = [kind for kind in plugin.hook_kinds() if kind in _UNCOMPILABLE]
        if kinds:
            raise HooktrainError(
                f"plugin {plugin.name!r} uses full backward hooks ({', '.join(kinds)}), with which torch.compile runs the whole model "
                "uncompiled; set compile=false to use it, or leave it out of `plugins`"
            )


def _default_all_reduce() -> AllReduce | None:
    """``torch.distributed`` when this process is one of several, else None (nothing to combine)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _distributed_all_reduce
    return None


def _distributed_all_reduce(tensor: Tensor, op: str) -> Tensor:
    on_host = tensor.device.type == "cpu" and dist.get_backend() == "nccl"  # NCCL reduces GPU tensors only
    work = tensor.cuda() if on_host else tensor
    dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return work.cpu() if on_host else work


def _is_writer() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _fit_other_plugins(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A checkpoint's plugin state meets this run's plugins: state of plugins this run lacks is dropped
    (with a warning), plugins new to this run keep their fresh buffers. Any LightningModule, any loop."""
    own = module.state_dict(prefix=prefix)
    for key in [key for key in state_dict if key.startswith(prefix) and key not in own]:
        log.warning("the checkpoint holds %s, state of a plugin this run does not use: ignored", key)
        del state_dict[key]
    for key, value in own.items():
        state_dict.setdefault(key, value)

