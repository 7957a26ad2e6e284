"""grad_logger: gradient norms per layer, at the layer's output and of its parameters, and their histograms (as wandb.watch)."""

import torch
from torch import Tensor, nn

from hooktrain.errors import check_in_range
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.stats import ema_update_


class GradLogger(HookPlugin):
    """Logs per-layer gradient norms (at the output and of the parameters) and histograms of both gradients.

    Hooks: an ``output_grad`` hook reads the gradient of the loss at the module's output (what a
    full backward hook sees as ``grad_output[0]``, without its cost). Parameter
    gradient norms are read when the step's gradients are final. Gradients are unscaled first under
    mixed precision.

    Buffers (``plugin_state.grad_logger.*``, saved in checkpoints): ``ema_grad_norm`` and
    ``ema_param_grad_norm``, one value per selected module (NaN before its first value), and
    ``updates``, the number of steps folded in. The averages are not charted: TensorBoard's smoothing shows the same.

    TensorBoard: scalars ``watch/grad_logger/grad_norm/<module>``, ``watch/grad_logger/param_grad_norm/<module>``; histograms
    ``watch/grad_logger/grad/<module>`` (at the output) and ``watch/grad_logger/param_grad/<module>`` (every parameter of the layer);
    images ``watch/grad_logger/by_layer/<stat>`` (every layer against the steps, log colour scale).

    Args:
        ema_decay: weight of the past in the moving averages, in [0, 1).
        histograms: also log histograms of the gradients at each module's output and of its parameters.
        **kwargs: ``every_n_steps``, ``targets``, ``types`` of :class:`HookPlugin`.
    """

    layer_pictures = ("grad_norm", "param_grad_norm")

    def __init__(self, ema_decay: float = 0.9, histograms: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ema_decay = check_in_range(self.field("ema_decay"), ema_decay, 0.0, 1.0)
        self.histograms = bool(histograms)

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        # NaN until a module's first value arrives, which then becomes the average as it is.
        state.register_buffer("ema_grad_norm", torch.full((len(modules),), float("nan")))
        state.register_buffer("ema_param_grad_norm", torch.full((len(modules),), float("nan")))
        state.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def output_grad(self, ctx: HookContext, module: nn.Module, grad: Tensor) -> None:
        grad = ctx.unscale(grad)
        ctx.record("grad_norm", torch.linalg.vector_norm(grad))
        if self.histograms and self.writes_now(ctx):
            ctx.record_histogram("grad", grad)

    def before_optimizer_step(self, ctx: HookContext, module: nn.Module) -> None:
        grads = [param.grad for param in module.parameters() if param.grad is not None]
        if grads:
            norms = torch.stack(torch._foreach_norm(grads))  # one call for all of the layer's parameters
            ctx.record("param_grad_norm", torch.linalg.vector_norm(norms))
            if self.histograms and self.writes_now(ctx):
                ctx.record_histogram("param_grad", torch.cat([grad.flatten() for grad in grads]))

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        for stat in ("grad_norm", "param_grad_norm"):
            if stat in stats:
                ema_update_(state.get_buffer(f"ema_{stat}"), stats[stat], self.ema_decay)
        state.updates.add_(1)
        return {}
