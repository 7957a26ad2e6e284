"""weight_stats: per-layer weight norm, update-to-weight ratio and weight histograms (as wandb.watch)."""

import torch
from torch import Tensor, nn

from hooktrain.errors import check_in_range
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.stats import ema_update_


def flat_parameters(module: nn.Module) -> Tensor:
    return torch.cat([param.detach().flatten() for param in module.parameters()])


class WeightStats(HookPlugin):
    """Logs per-layer weight norm and update-to-weight ratio ``||w_after - w_before|| / ||w_after||``.

    The ratio says how far one optimizer step moves a layer: around 1e-3 is the usual healthy
    range; far above, the learning rate is too high for that layer; far below, it barely learns.
    Hooks: none inside the model; a copy of each selected layer's parameters is taken before the
    optimizer step (on active steps only) and compared after it.

    Buffers: ``ema_update_ratio``, one value per layer (not charted: TensorBoard's smoothing shows the same).

    TensorBoard: scalars ``watch/weight_stats/weight_norm/<module>``, ``watch/weight_stats/update_ratio/<module>``; histograms
    ``watch/weight_stats/weight/<module>`` (every parameter of the layer); images ``watch/weight_stats/by_layer/<stat>``.

    Args:
        ema_decay: weight of the past in the running average, in [0, 1).
        **kwargs: ``every_n_steps``, ``targets``, ``types``, ``log_every_n_steps`` of :class:`HookPlugin`.
    """

    layer_pictures = ("weight_norm", "update_ratio")

    def __init__(self, ema_decay: float = 0.9, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ema_decay = check_in_range(self.field("ema_decay"), ema_decay, 0.0, 1.0)
        self._before: dict[int, Tensor] = {}

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        state.register_buffer("ema_update_ratio", torch.full((len(modules),), float("nan")))

    def before_optimizer_step(self, ctx: HookContext, module: nn.Module) -> None:
        self._before[ctx.index] = flat_parameters(module)  # torch.cat copies: the weights before the step

    def after_optimizer_step(self, ctx: HookContext, module: nn.Module) -> None:
        before = self._before.pop(ctx.index, None)
        if before is None:
            return
        after = flat_parameters(module)
        norm = torch.linalg.vector_norm(after)
        ctx.record("weight_norm", norm)
        ctx.record("update_ratio", torch.linalg.vector_norm(after - before) / norm.clamp_min(1e-12))
        if self.writes_now(ctx):
            ctx.record_histogram("weight", after)

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        if "update_ratio" in stats:
            ema_update_(state.ema_update_ratio, stats["update_ratio"], self.ema_decay)
        return {}
