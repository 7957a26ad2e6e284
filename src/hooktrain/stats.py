"""Per-step statistics a plugin records in its hooks, kept as device tensors until the runner flushes."""

import torch
from torch import Tensor

HISTOGRAM_BINS = 64


def histogram_summary(values: Tensor, bins: int = HISTOGRAM_BINS) -> Tensor:
    """``[min, max, count, sum, sum of squares, counts of bins equal-width buckets]`` as one tensor.

    Computed on the values' device without a host sync (no ``histc`` range lookup, no ``bincount``
    size), so a hook can summarize a large gradient and drop it. TensorBoard's own
    ``add_histogram`` would copy the values and run NumPy, whose threads then compete with
    torch's on small machines.
    """
    flat = values.flatten().float()
    low, high = flat.min(), flat.max()
    counts = bucket_counts(flat, low, low + (high - low).clamp_min(torch.finfo(torch.float32).tiny), bins)
    count = torch.full((), float(flat.numel()), device=flat.device)  # a fill kernel, not a host-to-device copy
    moments = torch.stack([low, high, count, flat.sum(), flat.square().sum()])
    return torch.cat([moments, counts])


def bucket_counts(values: Tensor, low: float | Tensor, high: float | Tensor, bins: int) -> Tensor:
    """How many of ``values`` fall in each of ``bins`` equal buckets over ``[low, high]``; outliers go to the end buckets.

    ``scatter_add_`` into a fixed-size tensor, so no host sync (``bincount`` and ``histc`` need one).
    """
    flat = values.detach().flatten().float()
    index = ((flat - low) * (bins / (high - low))).long().clamp_(0, bins - 1)
    return torch.zeros(bins, device=flat.device).scatter_add_(0, index, torch.ones_like(flat))


def ema_update_(average: Tensor, value: Tensor, decay: float) -> Tensor:
    """In place, ``average = decay * average + (1 - decay) * value``; returns ``average``.

    A NaN in ``average`` (no value yet) takes the value as it is; a NaN in ``value`` (not
    recorded this step) leaves the average alone. In place, because DDP broadcasts buffers.
    """
    blended = torch.where(torch.isnan(average), value, torch.lerp(value, average, decay))
    return average.copy_(torch.where(torch.isnan(value), average, blended))


class StepStats:
    """Sums and call counts per (statistic, module index) for one active step.

    Values are detached and stay on their device: recording never syncs with the host. Counts are
    plain ints, so averaging over several calls (gradient accumulation, a module used twice) is free.
    """

    def __init__(self, num_modules: int) -> None:
        self.num_modules = num_modules
        self.sums: dict[str, list[Tensor | None]] = {}
        self.counts: dict[str, list[int]] = {}
        self.histograms: dict[tuple[str, int], Tensor] = {}

    def add(self, stat: str, index: int, value: Tensor) -> None:
        value = value.detach().float()
        if stat not in self.sums:
            self.sums[stat] = [None] * self.num_modules
            self.counts[stat] = [0] * self.num_modules
        total = self.sums[stat][index]
        self.sums[stat][index] = value if total is None else total + value
        self.counts[stat][index] += 1

    def add_histogram(self, stat: str, index: int, values: Tensor) -> None:
        self.histograms[(stat, index)] = histogram_summary(values.detach())

    def means(self) -> dict[str, Tensor]:
        """Each statistic as a ``(num_modules, *shape)`` tensor of means; NaN where a module recorded nothing."""
        means = {}
        for stat, sums in self.sums.items():
            missing = torch.full_like(next(total for total in sums if total is not None), float("nan"))
            means[stat] = torch.stack(
                [missing if total is None else total / count for total, count in zip(sums, self.counts[stat])]
            )
        return means

    def recorded(self, stat: str) -> list[bool]:
        """Which modules recorded ``stat`` this step (known on the host, without looking at values)."""
        return [count > 0 for count in self.counts[stat]]

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.histograms.clear()
