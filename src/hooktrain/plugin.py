"""HookPlugin and HookContext: the one file a plugin author reads.

A plugin overrides only the hooks it needs. The session registers exactly those kinds on the
selected modules, only on the steps (and phases) where the plugin is active, and owns every handle::

    class OutputNorm(HookPlugin):
        \"\"\"Logs the norm of each selected module's output.\"\"\"

        def forward(self, ctx, module, args, output):
            ctx.record("output_norm", output.norm())  # logged as <plugin name>/output_norm/<module>

Hooks keep PyTorch's meaning: a hook that returns something other than ``None`` replaces the
module's inputs, output or gradient. Logging plugins return ``None``.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hooktrain.errors import HooktrainError, check_positive_int
from hooktrain.stats import StepStats

HOOK_KINDS = ("forward_pre", "forward", "backward_pre", "backward", "output_grad")
STEP_METHODS = ("before_optimizer_step", "after_optimizer_step")  # called by the session per selected module, not registered
PHASES = ("train", "validate", "test", "predict", "analyze")  # analyze: python -m hooktrain analyze


@dataclass
class StepInfo:
    """Shared by all contexts of a session; the engine tells the session the step and phase, the session updates this."""

    step: int = 0
    phase: str = "train"  # one of PHASES
    total_steps: float = float("inf")  # optimizer steps the fit will take (Lightning's estimate)
    scaler: Any = None  # the GradScaler of a mixed-precision run, else None
    seconds: dict[str, float] = field(default_factory=dict)  # host time spent in each plugin's code this step
    output_dir: Path | None = None  # the run directory, for plugins that write files (activation_cache)
    split: str | None = None  # the data split an evaluation phase runs (analyze: test, val or train)
    split_size: int | None = None  # samples in that split
    targets: Tensor | None = None  # the current batch's labels, where the engine passes them
    sample_index: Tensor | None = None  # the current batch's positions in the split (analyze), else None

    @property
    def active_scaler(self) -> Any:
        """The GradScaler if one is enabled (hooks then see gradients multiplied by its scale), else None."""
        return self.scaler if self.scaler is not None and self.scaler.is_enabled() else None

    def charge(self, plugin_name: str, since: float) -> None:
        """Adds the host time from ``since`` (a ``time.perf_counter()`` reading) to the plugin's account."""
        self.seconds[plugin_name] = self.seconds.get(plugin_name, 0.0) + time.perf_counter() - since


class HookContext:
    """What a hook knows besides its PyTorch arguments: which module, which step, where numbers go.

    The session makes one context per (plugin, module) pair.

    Attributes:
        module_name: the module's qualified name in the model, e.g. ``"features.conv1"``.
        index: the module's position in the plugin's selection (the index into its buffers).
        state: the plugin's state module (its buffers, as ``setup`` registered them).
    """

    def __init__(self, module_name: str, index: int, stats: StepStats, info: StepInfo, state: nn.Module | None = None) -> None:
        self.module_name = module_name
        self.index = index
        self.state = state
        self._stats = stats
        self.info = info

    @property
    def step(self) -> int:
        """The optimizer step being computed (Lightning's ``global_step``); in evaluation, the last one trained."""
        return self.info.step

    @property
    def phase(self) -> str:
        """``train``, ``validate``, ``test``, ``predict`` or ``analyze``."""
        return self.info.phase

    def record(self, stat: str, value: Tensor, reduce: str = "mean") -> None:
        """Adds a tensor for this module, combined by ``reduce`` over the step's calls and over processes.

        ``reduce`` is ``mean`` (default), ``sum`` (counts), ``max`` or ``min``: a module called
        twice in a step (a shared layer) records twice, and ``sum`` adds both, ``mean`` averages them.
        The value stays on its device: no host sync. A scalar is logged as ``watch/<plugin>/<stat>/<module_name>``;
        a statistic whose name starts with ``_`` reaches ``update`` but is not logged (the plugin's own bookkeeping).
        """
        self._stats.add(stat, self.index, value, reduce)

    def record_histogram(self, stat: str, values: Tensor) -> None:
        """Summarizes ``values`` on their device (64 bins, no copy kept) for a TensorBoard histogram; every call of the step merges in (rank 0 logs it)."""
        self._stats.add_histogram(stat, self.index, values)

    def unscale(self, grad: Tensor) -> Tensor:
        """Divides a gradient by the GradScaler's scale under mixed precision; returns it as is otherwise."""
        scale = self._grad_scale()
        return grad if scale is None else grad / scale

    def rescale(self, grad: Tensor) -> Tensor:
        """The inverse of :meth:`unscale`: back to the scaled units autograd works in."""
        scale = self._grad_scale()
        return grad if scale is None else grad * scale

    def _grad_scale(self) -> Tensor | None:
        return getattr(self.info.active_scaler, "_scale", None)


class HookPlugin:
    """Base class of hooktrain plugins: override the hook methods you need, nothing else.

    Args:
        name: the plugin's key under ``plugins`` in the config; the run passes it.
        every_n_steps: in training, the plugin is active (hooks attached, buffers updated) on optimizer
            steps that are multiples of this. Steps in between cost nothing: no hook is attached.
        log_every_n_steps: statistics are logged on active steps that are multiples of this; by
            default every active step. Must be a multiple of ``every_n_steps``. Plugins that act
            on every step (clipping) log less often, since logging copies values to the host.
        targets: globs over ``model.named_modules()`` names, e.g. ``["features.*"]``.
        types: module class names, e.g. ``["Conv2d", "Linear"]``. Without targets and types,
            the plugin hooks every leaf module that has parameters.
        phases: where the plugin runs, among ``train``, ``validate``, ``test``, ``predict`` and
            ``analyze`` (``python -m hooktrain analyze``). By default ``[train]`` for plugins that
            observe, and all of them for plugins that change the forward computation
            (``changes_forward``), so evaluation measures the model that trained.
            In evaluation a plugin runs on every batch; what it records is logged once per phase as
            ``watch/<plugin>/<phase>/<stat>/<module>`` and does not touch its buffers.

    Raises:
        HooktrainError: a value is out of range; the message names ``plugins.<name>.<field>``.

    Example:
        ``python train.py plugins=[grad_logger] plugins.grad_logger.targets=[features.*]``
    """

    changes_training: bool = False
    """True for plugins that alter the computation (clipping, pruning, stopping); False for those that only observe."""

    changes_forward: bool = False
    """True for plugins whose hooks change what modules compute in the forward pass (ablation, patching, masks).

    They run in every phase by default, and ``export`` must bake their effect into the weights or
    say it cannot (the run then says that ``model.pt`` alone does not reproduce the tested model).
    """

    deterministic_state: bool = True
    """False when the buffers hold measurements that differ between identical runs (wall-clock times): exact-resume checks skip them."""

    trains: bool = True
    """False for plugins that only make sense on a trained model (patch: it needs an activation file and the positions
    of analyze's batches): the test kit's training runs and the benchmark leave them out."""

    acts_when_idle: bool = False
    """True when the plugin acts on every step whatever its ``every_n_steps`` (pruning keeps pruned weights at zero):
    the benchmark cannot make it idle."""

    default_types: tuple[str, ...] = ()
    """Module class names the plugin hooks when the config gives neither ``targets`` nor ``types``; where the model
    has none of them (or this is empty), every leaf layer with parameters."""

    layer_pictures: tuple[str, ...] = ()
    """Per-module statistics (recorded or returned by ``update``) that also get one picture with every layer:
    rows = layers, columns = logging steps, colour = value (``watch/<plugin>/by_layer/<stat>``, drawn by ``HookSession.draw``).
    The session keeps their last 100 logging steps in ``state.by_layer``, so a resumed run's pictures go on."""

    example_settings: dict[str, Any] = {}
    """Parameters that let the plugin run on the built-in models (LeNet, MLP) where its defaults cannot (ablate's
    targets): the benchmark and ``hooktrain.testing`` pass them, as ``plugins.<name>.<key>=<value>`` overrides."""

    def __init__(
        self,
        name: str,
        every_n_steps: int = 1,
        targets: Sequence[str] = (),
        types: Sequence[str] = (),
        log_every_n_steps: int | None = None,
        phases: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.info = StepInfo()  # replaced by the session's: the current step and phase, also during ``update``
        self.every_n_steps = check_positive_int(self.field("every_n_steps"), every_n_steps)
        self.log_every_n_steps = check_positive_int(self.field("log_every_n_steps"), log_every_n_steps or every_n_steps)
        if self.log_every_n_steps % self.every_n_steps:
            raise HooktrainError(
                f"`{self.field('log_every_n_steps')}` must be a multiple of `every_n_steps` ({every_n_steps}), got {log_every_n_steps}"
            )
        self.targets = self._string_list("targets", targets)
        self.types = self._string_list("types", types)
        default_phases = PHASES if self.changes_forward else ("train",)
        self.phases = tuple(self._string_list("phases", default_phases if phases is None else phases))
        unknown = [phase for phase in self.phases if phase not in PHASES]
        if unknown or not self.phases:
            raise HooktrainError(f"`{self.field('phases')}` must be a non-empty list of {list(PHASES)}, got {list(self.phases)}")

    def field(self, key: str) -> str:
        """The config path of one of this plugin's parameters, for error messages."""
        return f"plugins.{self.name}.{key}"

    def is_active(self, step: int, phase: str = "train") -> bool:
        """Whether the plugin's hooks run: in training on steps divisible by ``every_n_steps``, in evaluation always."""
        return phase in self.phases and (phase != "train" or step % self.every_n_steps == 0)

    def is_logging(self, step: int) -> bool:
        return step % self.log_every_n_steps == 0

    def writes_now(self, ctx: HookContext) -> bool:
        """Whether what a hook records now gets written: on logging steps in training, always in evaluation.
        For work only the log needs (histograms) in plugins that act more often than they log."""
        return ctx.phase != "train" or self.is_logging(ctx.step)

    def hook_kinds(self) -> list[str]:
        """The hooks and step methods this plugin overrides: exactly those get registered or called (a plugin whose
        settings leave one idle returns less: no empty call per module and step)."""
        return [kind for kind in (*HOOK_KINDS, *STEP_METHODS, "gradients_ready") if self.overrides(kind)]

    def overrides(self, method: str) -> bool:
        """Whether this plugin's class overrides a method of HookPlugin."""
        return getattr(type(self), method) is not getattr(HookPlugin, method)

    # Hooks: called with the context first, then PyTorch's own arguments.

    def forward_pre(self, ctx: HookContext, module: nn.Module, args: tuple) -> Any:
        """Called before ``module.forward``; a non-None return replaces ``args``."""

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output: Any) -> Any:
        """Called after ``module.forward``; a non-None return replaces the output."""

    def backward_pre(self, ctx: HookContext, module: nn.Module, grad_output: tuple) -> Any:
        """Called before the gradients of the module's inputs are computed; a non-None return replaces ``grad_output``."""

    def backward(self, ctx: HookContext, module: nn.Module, grad_input: tuple, grad_output: tuple) -> Any:
        """Called once the gradients of the module's inputs are computed; a non-None return replaces ``grad_input``."""

    def output_grad(self, ctx: HookContext, module: nn.Module, grad: Tensor) -> Tensor | None:
        """Called with the gradient of the loss at the module's output; a non-None return replaces it.

        A tensor hook that a forward hook puts on the output (modules whose output is a Tensor):
        it sees what ``backward``'s ``grad_output[0]`` sees at a fraction of the cost, since a full
        backward hook wraps the module's inputs and outputs in autograd functions at every forward,
        and in-place ops after the module do not break it.
        """

    def before_optimizer_step(self, ctx: HookContext, module: nn.Module) -> None:
        """Called on active steps for each selected module, when parameter gradients are final and unscaled."""

    def after_optimizer_step(self, ctx: HookContext, module: nn.Module) -> None:
        """Called on active steps for each selected module, after the optimizer updated the parameters."""

    def gradients_ready(self) -> None:
        """Called once on active training steps, after ``before_optimizer_step``, with the gradients final and unscaled.

        For work on every selected module at once: one ``torch._foreach_*`` call over all their gradients costs a
        fraction of a call per module. The plugin keeps what it needs from ``setup``'s ``modules``, and what it
        computes, for its ``update``.
        """

    # State: buffers on a small module, the session's ``state[name]`` (``plugin_state.<name>`` in a Lightning checkpoint).

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        """Registers this plugin's buffers on ``state``; called once, before a checkpoint is restored.

        ``modules`` maps qualified names to the selected modules, in the order of ``ctx.index``.
        """

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Folds one active step's statistics into the buffers, in place; returns more statistics to log.

        Each value of ``stats`` is a ``(num_modules, *shape)`` tensor of what ``ctx.record`` got,
        already averaged over the processes of a distributed run, so every rank writes the same
        buffers. Returned tensors are logged: shape ``()`` as ``watch/<plugin>/<stat>``, ``(num_modules,)``
        as a scalar per module, ``(num_modules, [3,] H, W)`` with values in [0, 1] as an image per module.
        Called for training steps only: evaluation phases log what hooks record and leave buffers alone.
        """
        return {}

    def end_phase(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Called when an evaluation phase (validate, test, predict, analyze) the plugin ran in ends, with the
        phase's statistics combined as for ``update``; returns more statistics to log. Buffers stay as they are."""
        return {}

    def draw(self, state: nn.Module) -> dict[str, Any]:
        """Pictures drawn from the buffers, ``{name: matplotlib Figure}``, logged as images ``watch/<plugin>/<name>``.

        Called on rank 0 when a fit ends and, in a long one, a few times during it (``HookSession.draw``): a figure takes
        about 0.1 s to draw.
        """
        return {}

    def export(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Transforms the model's state dict into the exported weights (``model.pt``); returns it.

        The default keeps it as it is for plugins that leave the forward alone, and returns ``None``
        for those that change it (``changes_forward``): their effect is not in the weights, and the
        run says that ``model.pt`` alone does not reproduce the tested model. Override it to bake
        the effect in, as pruning does with its masks.
        """
        return None if self.changes_forward else state_dict

    def _string_list(self, key: str, value: object) -> list[str]:
        values = [value] if isinstance(value, str) else list(value or [])
        if not all(isinstance(item, str) for item in values):
            raise HooktrainError(f"`{self.field(key)}` must be a list of strings, got {value!r}")
        return values
