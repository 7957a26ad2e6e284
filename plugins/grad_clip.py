"""grad_clip: clips the gradient flowing back through chosen layers, by norm or by value, and counts how often."""

import torch
from torch import Tensor, nn

from hooktrain.errors import HooktrainError, check_positive
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.stats import absmax, cpu_value

MODES = ("norm", "value")
PLACES = ("output", "parameters")


class GradClip(HookPlugin):
    """Clips the gradient at each selected layer's output (or of its parameters) by norm or by value.

    ``at: output`` (an ``output_grad`` hook) clips the gradient arriving at the layer's output,
    before the layer back-propagates it: the layer's parameter gradients and every
    earlier layer see the clipped gradient. This is what Lightning's ``gradient_clip_val`` cannot
    do: Lightning clips the parameter gradients of the whole model after backward, with one norm.
    ``at: parameters`` clips each selected layer's parameter gradients after backward, per layer
    (Lightning's clipping, layer by layer). Norms and values are in unscaled units under mixed precision.

    Buffers: ``clipped_steps`` (optimizer steps in which the layer was clipped) and
    ``max_pre_clip_norm`` (largest gradient norm seen before clipping), one value per layer;
    ``recent_*``, the same since the last logging step.
    Logged, per layer, about the steps since the last logging step: ``clipped_fraction`` (share of
    them in which a call clipped) and ``pre_clip_norm_max`` (the largest norm before clipping), so a
    spike between two logging steps shows, and nothing repeats grad_logger's norm at the logging step.
    A hook does the clipping and records one number; the rest is derived once per step for every
    layer together: a few small kernels per layer, not a dozen (most of a plugin's cost on a small model).

    Args:
        mode: ``norm`` scales the gradient down to ``max_norm`` when its L2 norm exceeds it;
            ``value`` clamps every element to ``[-clip_value, clip_value]``.
        max_norm: the largest norm allowed (mode ``norm``), > 0.
        clip_value: the largest absolute value allowed (mode ``value``), > 0.
        at: ``output`` or ``parameters``, as above.
        **kwargs: ``every_n_steps`` (1: clip every step), ``targets``, ``types``, ``log_every_n_steps``.
    """

    changes_training = True
    layer_pictures = ("clipped_fraction", "pre_clip_norm_max")

    def __init__(self, mode: str = "norm", max_norm: float = 1.0, clip_value: float = 1.0, at: str = "output", **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise HooktrainError(f"`{self.field('mode')}` must be one of {list(MODES)}, got {mode!r}")
        if at not in PLACES:
            raise HooktrainError(f"`{self.field('at')}` must be one of {list(PLACES)}, got {at!r}")
        self.max_norm = check_positive(self.field("max_norm"), max_norm)
        self.clip_value = check_positive(self.field("clip_value"), clip_value)
        self.mode, self.at = mode, at

    def hook_kinds(self) -> list[str]:
        return ["output_grad"] if self.at == "output" else ["before_optimizer_step"]

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        state.register_buffer("clipped_steps", torch.zeros(len(modules), dtype=torch.long))
        state.register_buffer("max_pre_clip_norm", torch.zeros(len(modules)))
        state.register_buffer("recent_clipped_steps", torch.zeros(len(modules)))
        state.register_buffer("recent_max_pre_clip_norm", torch.zeros(len(modules)))
        state.register_buffer("recent_steps", torch.zeros((), dtype=torch.long))

    def output_grad(self, ctx: HookContext, module: nn.Module, grad: Tensor) -> Tensor:
        return self._clip(ctx, grad)

    def before_optimizer_step(self, ctx: HookContext, module: nn.Module) -> None:
        params = [param for param in module.parameters() if param.grad is not None]
        if params:  # Lightning has unscaled the gradients by now
            flat = torch.cat([param.grad.flatten() for param in params])
            clipped = self._clip_unscaled(ctx, flat)
            for param, part in zip(params, clipped.split([param.numel() for param in params])):
                param.grad.copy_(part.view_as(param.grad))

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        if "_pre_clip_norm" not in stats:
            return {}
        pre = stats["_pre_clip_norm"]
        clipped = pre > self.max_norm if self.mode == "norm" else stats["_absmax"] > self.clip_value  # NaN (no call): False
        for steps, largest in ((state.clipped_steps, state.max_pre_clip_norm), (state.recent_clipped_steps, state.recent_max_pre_clip_norm)):
            steps.add_(clipped)
            torch.fmax(largest, pre, out=largest)
        state.recent_steps.add_(1)
        if not self.is_logging(self.info.step):
            return {}
        logged = {"clipped_fraction": state.recent_clipped_steps / state.recent_steps, "pre_clip_norm_max": state.recent_max_pre_clip_norm.clone()}
        for buffer in (state.recent_clipped_steps, state.recent_max_pre_clip_norm, state.recent_steps):
            buffer.zero_()
        return logged

    def _clip(self, ctx: HookContext, grad: Tensor) -> Tensor:
        """Clips a gradient in autograd's (scaled) units, deciding in unscaled units."""
        return ctx.rescale(self._clip_unscaled(ctx, ctx.unscale(grad)))

    def _clip_unscaled(self, ctx: HookContext, grad: Tensor) -> Tensor:
        pre = torch.linalg.vector_norm(grad)
        ctx.record("_pre_clip_norm", pre, reduce="max")
        if self.mode == "norm":
            known = cpu_value(pre)
            if known is not None:  # free to read: most calls clip nothing and skip a pass over the gradient (2-3% of a LeNet step)
                factor = self.max_norm / (known + 1e-6)
                return grad * factor if factor < 1.0 else grad
            # torch.nn.utils.clip_grad_norm_'s factor, min(1, max_norm / (pre + 1e-6)), in four ops, not five
            return grad / (pre + 1e-6).div_(self.max_norm).clamp_min_(1.0)
        ctx.record("_absmax", absmax(grad), reduce="max")
        return grad.clamp(-self.clip_value, self.clip_value)
