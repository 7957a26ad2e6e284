"""activation_logger: per-layer activation statistics, their running averages, histograms and a picture over time."""

import torch
from torch import Tensor, nn

from hooktrain.errors import HooktrainError, check_in_range, check_positive_int
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.stats import bucket_counts, ema_update_

STATS = ("mean", "std", "min", "max", "zero_fraction", "dead_fraction", "saturated_fraction")


def activation_stats(x: Tensor, saturation: float) -> Tensor:
    """``STATS`` of a ``(B, units, ...)`` output as one tensor, computed on its device.

    A unit (a channel or a feature) is dead when it is exactly 0 for every sample and position of
    the batch; a value is saturated when ``|x| >= saturation`` (meaningful for tanh or sigmoid).
    """
    x = x.detach().float()
    units = x.transpose(0, 1).flatten(1) if x.dim() > 1 else x.unsqueeze(0)  # (units, everything else)
    return torch.stack([
        x.mean(), x.std() if x.numel() > 1 else torch.zeros((), device=x.device), x.amin(), x.amax(),
        (x == 0).float().mean(), (units == 0).all(dim=1).float().mean(), (x.abs() >= saturation).float().mean(),
    ])


# Anchors of a dark-to-bright colormap (black, purple, orange, light yellow), as in "magma".
COLORS = torch.tensor([[0.0, 0.0, 0.02], [0.35, 0.05, 0.5], [0.9, 0.3, 0.25], [0.99, 0.9, 0.55]])


def colorize(values: Tensor) -> Tensor:
    """``(N, H, W)`` values in [0, 1] to ``(N, 3, H, W)`` RGB through ``COLORS``."""
    colors = COLORS.to(values.device)
    position = values.clamp(0, 1) * (len(colors) - 1)
    low = position.floor().long().clamp(max=len(colors) - 2)
    weight = (position - low).unsqueeze(-1)
    rgb = torch.lerp(colors[low], colors[low + 1], weight)  # (N, H, W, 3)
    return rgb.permute(0, 3, 1, 2)


def fixed_histogram(x: Tensor, low: float | Tensor, high: float | Tensor, bins: int) -> Tensor:
    """Fractions of ``x`` in ``bins`` equal buckets over ``[low, high]``, outliers in the end buckets; sync-free."""
    return bucket_counts(x, low, high, bins) / max(x.numel(), 1)


class ActivationLogger(HookPlugin):
    """Logs per-layer activation mean, std, min/max, zero/dead/saturated fractions, histograms and histograms over time.

    Hooks: a forward hook reads each selected module's output (detached; only the statistics are
    kept). Per step the values are averaged over micro-batches and processes.

    Buffers (``plugin_state.activation_logger.*``): ``ema_<stat>`` for each statistic, one value per
    module; ``history``, the last ``image_width`` activation histograms per module (the picture);
    ``picture_range``, each module's value range of the picture.

    TensorBoard: scalars ``activation_logger/<stat>/<module>``; histograms
    ``activation_logger/activation/<module>``; images ``activation_logger/over_time/<module>``,
    time to the right, value range bottom to top, color the share of values in each bin (log
    scale, each column scaled to its own maximum, so the shape of every step's distribution shows).

    Args:
        ema_decay: weight of the past in the running averages, in [0, 1).
        saturation: ``|x|`` at or above which a value counts as saturated.
        range: ``[low, high]`` of the histogram-over-time picture; ``None``: per module, the range
            seen at the first active step, widened by twice its span on each side (kept in ``picture_range``).
        bins: rows of the picture.
        image_width: columns of the picture (logging steps shown).
        histograms: also log TensorBoard histograms of the activations.
        **kwargs: ``every_n_steps``, ``targets``, ``types``, ``log_every_n_steps`` of :class:`HookPlugin`.
    """

    def __init__(
        self,
        ema_decay: float = 0.9,
        saturation: float = 0.99,
        range: tuple[float, float] | None = None,
        bins: int = 64,
        image_width: int = 100,
        histograms: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.ema_decay = check_in_range(self.field("ema_decay"), ema_decay, 0.0, 1.0)
        self.saturation = float(saturation)
        if range is not None:
            low, high = (float(value) for value in range)
            if not low < high:
                raise HooktrainError(f"`{self.field('range')}` must be [low, high] with low < high, or null, got {list(range)}")
            range = (low, high)
        self.range = range
        self.bins = check_positive_int(self.field("bins"), bins)
        self.image_width = check_positive_int(self.field("image_width"), image_width)
        self.histograms = bool(histograms)

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        for stat in STATS:
            state.register_buffer(f"ema_{stat}", torch.full((len(modules),), float("nan")))
        state.register_buffer("history", torch.zeros(len(modules), self.bins, self.image_width))
        state.register_buffer("picture_range", torch.full((len(modules), 2), float("nan")))

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not isinstance(output, Tensor) or output.numel() == 0:
            return
        for stat, value in zip(STATS, activation_stats(output, self.saturation)):
            ctx.record(stat, value)
        ctx.record("distribution", fixed_histogram(output, *self._picture_range(ctx, output), self.bins))
        if self.histograms:
            ctx.record_histogram("activation", output)

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        if "distribution" not in stats:
            return {}
        averages = {f"ema_{stat}": ema_update_(state.get_buffer(f"ema_{stat}"), stats[stat], self.ema_decay) for stat in STATS}
        if "picture_range" in stats:
            ranges = state.picture_range
            ranges.copy_(torch.where(torch.isnan(ranges), stats["picture_range"], ranges))
        history = state.history  # (modules, bins, width): shift left, newest column on the right
        history.copy_(torch.roll(history, shifts=-1, dims=2))
        history[:, :, -1] = stats["distribution"].nan_to_num(0.0)
        picture = torch.log1p(self.bins * history).flip(1)  # high values at the top; log so sparse bins show
        picture = picture / picture.amax(dim=1, keepdim=True).clamp_min(1e-12)  # each column to its maximum
        return {**averages, "over_time": colorize(picture)}

    def _picture_range(self, ctx: HookContext, output: Tensor) -> tuple[float | Tensor, float | Tensor]:
        """The configured range, or this module's saved one (from this step's values, the first time)."""
        if self.range is not None:
            return self.range
        x = output.detach().float()
        low, high = x.amin(), x.amax()
        margin = 2 * (high - low).clamp_min(1e-6)  # room for activations that grow while training
        saved = ctx.state.picture_range[ctx.index]
        bounds = torch.where(torch.isnan(saved), torch.stack([low - margin, high + margin]), saved)
        ctx.record("picture_range", bounds)
        return bounds[0], bounds[1]
