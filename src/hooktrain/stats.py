"""Per-step statistics a plugin records in its hooks, kept as device tensors until the session flushes."""

from collections.abc import Callable

import torch
from torch import Tensor

from hooktrain.errors import HooktrainError

HISTOGRAM_BINS = 64
REDUCTIONS = ("mean", "sum", "max", "min")

# all_reduce(tensor, op) -> tensor, op "sum" or "max": combines a tensor over the processes of a run.
AllReduce = Callable[[Tensor, str], Tensor]


def histogram_summary(values: Tensor, bins: int = HISTOGRAM_BINS) -> Tensor:
    """``[min, max, count, sum, sum of squares, counts of bins equal-width buckets]`` as one tensor.

    Computed on the values' device without a host sync (no ``histc`` range lookup), so a hook can
    summarize a large gradient and drop it. TensorBoard's own ``add_histogram`` would copy the values
    and run NumPy, whose threads then compete with torch's on small machines. About 15 small ops:
    on the CPU each costs more than the arithmetic of a small layer, so none is spent twice.
    """
    flat = values.detach().flatten().float()
    low, high = torch.aminmax(flat)
    count = torch.full((), float(flat.numel()), device=flat.device)  # a fill kernel, not a host-to-device copy
    moments = torch.stack([low, high, count, flat.sum(), flat.dot(flat)])
    return torch.cat([moments, bucket_counts(flat, low, high, bins)])


def merge_histograms(a: Tensor, b: Tensor) -> Tensor:
    """One summary of the values behind two :func:`histogram_summary` results (a module called twice a step).

    Moments add up exactly; each bucket's count moves to the bucket of the merged range that holds
    its centre, so the merged picture is exact to a bucket's width.
    """
    low, high = torch.minimum(a[0], b[0]), torch.maximum(a[1], b[1])
    bins = len(a) - 5
    centres = torch.cat([bucket_centres(summary[0], _upper(summary[0], summary[1]), bins) for summary in (a, b)])
    weights = torch.cat([a[5:], b[5:]])
    counts = torch.zeros(bins, device=a.device).scatter_add_(0, bucket_index(centres, low, high, bins), weights)
    return torch.cat([torch.stack([low, high]), a[2:5] + b[2:5], counts])


def bucket_index(values: Tensor, low: Tensor, high: Tensor, bins: int, dtype: torch.dtype = torch.long) -> Tensor:
    """Each value's bucket among ``bins`` equal ones over ``[low, high]`` (broadcast against ``values``), values outside
    in the end buckets and the maximum in the last; all values equal: one bucket, not a division by 0. Clamped before
    the cast (a far value overflows an int) and after it (NaN casts to the lowest int: the first bucket)."""
    scale = bins / (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    return (values - low).mul_(scale).clamp_(0, bins - 1).to(dtype).clamp_min_(0)


def bucket_counts(values: Tensor, low: Tensor, high: Tensor, bins: int) -> Tensor:
    """How many of ``values`` fall in each bucket of :func:`bucket_index`, as ``bins`` floats; exact, no host sync.

    On the CPU one ``bincount`` pass over int32 indices (for LeNet's first activation, 301,056 values, 2-4 times faster
    than a scatter, and a third faster than over int64 ones, 2026-11-24); on an accelerator ``bincount`` would sync to size
    its output, so a ``scatter_add_`` into a fixed size.
    """
    flat = values.flatten()
    if flat.device.type == "cpu":
        return torch.bincount(bucket_index(flat, low, high, bins, torch.int32), minlength=bins).float()
    index = bucket_index(flat, low, high, bins)
    return torch.zeros(bins, device=flat.device).scatter_add_(0, index, torch.ones(index.shape, device=flat.device))


def bucket_centres(low: Tensor, high: Tensor, bins: int) -> Tensor:
    """The centres of ``bins`` equal buckets over ``[low, high]``, along a new last dimension (``(m, 1)`` ranges: ``(m, bins)``)."""
    return low + (high - low) * (torch.arange(bins, device=low.device) + 0.5) / bins


def _upper(low: Tensor, high: Tensor) -> Tensor:
    """``high``, or just above ``low`` when all values are equal (a range must not be empty)."""
    return low + (high - low).clamp_min(torch.finfo(torch.float32).tiny)


def cpu_value(value: Tensor) -> float | None:
    """The number in a one-element tensor when reading it costs no sync (the tensor is on the CPU), else None.

    For work a number can skip where it is free to read (grad_clip: no pass over a gradient that needs no
    clipping); on an accelerator the caller keeps to tensors. ``hooktrain.testing``'s host-sync check lets
    this read pass, since on an accelerator it never happens.
    """
    return value.item() if value.device.type == "cpu" else None


def absmax(values: Tensor) -> Tensor:
    """The largest ``|value|``; NaN if any value is NaN, inf if any is infinite (as ``vector_norm(x, inf)``).

    From one ``aminmax`` pass: on the CPU ``torch.linalg.vector_norm(x, inf)`` takes 10-20 times as long
    (456 against 26 us for a (64, 6, 28, 28) activation, 2026-11-23).
    """
    return largest_magnitude(*torch.aminmax(values.detach()))


def largest_magnitude(low: Tensor, high: Tensor) -> Tensor:
    """The largest ``|value|`` from the smallest and largest value (an ``aminmax`` a caller already has); NaN and inf carried."""
    return torch.maximum(high, low.neg())


def append_column_(history: Tensor, column: Tensor | float) -> Tensor:
    """In place, drops ``history``'s oldest entry along its last dimension and puts ``column`` last; returns ``history``.

    The buffers of pictures over logging steps (newest on the right); on the device, no host sync.
    """
    history.copy_(torch.roll(history, shifts=-1, dims=-1))
    history[..., -1] = column
    return history


def ema_update_(average: Tensor, value: Tensor, decay: float) -> Tensor:
    """In place, ``average = decay * average + (1 - decay) * value``; returns ``average``.

    A NaN in ``average`` (no value yet) takes the value as it is; a NaN in ``value`` (not
    recorded this step) leaves the average alone. In place, because DDP broadcasts buffers.
    """
    blended = torch.where(torch.isnan(average), value, torch.lerp(value, average, decay))
    return average.copy_(torch.where(torch.isnan(value), average, blended))


class _Statistic:
    """One statistic of one plugin: per module, the calls' values combined by ``reduce``, and the call count."""

    def __init__(self, reduce: str, num_modules: int) -> None:
        self.reduce = reduce
        self.values: list[Tensor | None] = [None] * num_modules
        self.counts = [0] * num_modules

    def add(self, index: int, value: Tensor) -> None:
        held = self.values[index]
        if held is None:
            self.values[index] = value
        elif self.reduce in ("mean", "sum"):
            self.values[index] = held + value
        else:
            self.values[index] = torch.maximum(held, value) if self.reduce == "max" else torch.minimum(held, value)
        self.counts[index] += 1

    def stacked(self, missing: float) -> Tensor:
        """``(num_modules, *shape)``: each module's combined value (a sum for mean), ``missing`` where it recorded nothing."""
        if all(count > 0 for count in self.counts):  # the usual case: no filler to make
            return torch.stack(self.values)
        example = next(value for value in self.values if value is not None)
        filler = torch.full_like(example, missing)
        return torch.stack([filler if value is None else value for value in self.values])


class StepStats:
    """What one plugin's hooks recorded in one step (or one evaluation phase), per statistic and module.

    Values are detached and stay on their device: recording never syncs with the host. Each
    statistic says how its values combine (``mean``, ``sum``, ``max``, ``min``): across the calls
    of a step (a module called twice, gradient accumulation) and across processes. Call counts are
    plain ints, so a single process combines without touching the device.
    """

    def __init__(self, num_modules: int, plugin_name: str = "plugin") -> None:
        self.num_modules = num_modules
        self.plugin_name = plugin_name
        self.stats: dict[str, _Statistic] = {}
        self.histograms: dict[tuple[str, int], Tensor] = {}

    def add(self, stat: str, index: int, value: Tensor, reduce: str = "mean") -> None:
        entry = self.stats.get(stat)
        if entry is None:
            if reduce not in REDUCTIONS:
                raise HooktrainError(f"plugin {self.plugin_name!r} recorded {stat!r} with reduce={reduce!r}; use one of {list(REDUCTIONS)}")
            entry = self.stats[stat] = _Statistic(reduce, self.num_modules)
        elif entry.reduce != reduce:
            raise HooktrainError(
                f"plugin {self.plugin_name!r} recorded {stat!r} with reduce={reduce!r} after reduce={entry.reduce!r}; "
                "a statistic combines one way"
            )
        if value.requires_grad:  # values computed in a backward hook or from .detach() need no second detach
            value = value.detach()
        entry.add(index, value if value.dtype == torch.float32 else value.float())

    def add_histogram(self, stat: str, index: int, values: Tensor) -> None:
        summary = histogram_summary(values)
        held = self.histograms.get((stat, index))
        self.histograms[(stat, index)] = summary if held is None else merge_histograms(held, summary)

    def combined(self, all_reduce: AllReduce | None = None) -> dict[str, Tensor]:
        """Each statistic as a ``(num_modules, *shape)`` tensor, combined over calls and, with ``all_reduce``, over processes.

        NaN where no call (on any process) recorded the statistic for a module. Over processes,
        ``mean`` is the mean of every call's value (sums and counts are added up), not a mean of means.
        """
        if not self.stats:
            return {}
        if all_reduce is None:
            return {stat: self._local(entry) for stat, entry in self.stats.items()}
        return self._over_processes(all_reduce)

    def recorded(self, stat: str) -> list[bool]:
        """Which modules recorded ``stat`` in this process (known on the host, without looking at values)."""
        return [count > 0 for count in self.stats[stat].counts]

    def clear(self) -> None:
        self.stats.clear()
        self.histograms.clear()

    @staticmethod
    def _local(entry: _Statistic) -> Tensor:
        values = entry.stacked(float("nan"))
        if entry.reduce == "mean":
            for index, count in enumerate(entry.counts):
                if count > 1:
                    values[index] /= count
        return values

    def _over_processes(self, all_reduce: AllReduce) -> dict[str, Tensor]:
        """Two all-reduces for every statistic of the plugin: one sum (sums and call counts), one max (max, and -min)."""
        entries = list(self.stats.items())
        adding = [(stat, entry) for stat, entry in entries if entry.reduce in ("mean", "sum")]
        extremes = [(stat, entry) for stat, entry in entries if entry.reduce in ("max", "min")]
        sums = [entry.stacked(0.0) for _, entry in adding]
        device = (sums or [extremes[0][1].stacked(0.0)])[0].device
        counts = torch.tensor([entry.counts for _, entry in entries], dtype=torch.float32).to(device)
        summed = all_reduce(torch.cat([counts.flatten(), *[part.flatten() for part in sums]]), "sum")
        counts, rest = summed[: counts.numel()].view_as(counts), summed[counts.numel() :]
        result: dict[str, Tensor] = {}
        for (stat, _), local, part in zip(adding, sums, rest.split([local.numel() for local in sums])):
            result[stat] = part.view_as(local)
        if extremes:
            signed = [entry.stacked(-float("inf")) * (1 if entry.reduce == "max" else -1) for _, entry in extremes]
            maxima = all_reduce(torch.cat([part.flatten() for part in signed]), "max")
            for (stat, entry), local, part in zip(extremes, signed, maxima.split([local.numel() for local in signed])):
                result[stat] = part.view_as(local) * (1 if entry.reduce == "max" else -1)
        for row, (stat, entry) in enumerate(entries):
            count = counts[row].view(-1, *[1] * (result[stat].dim() - 1))
            value = result[stat] / count.clamp_min(1) if entry.reduce == "mean" else result[stat]
            result[stat] = torch.where(count > 0, value, torch.full_like(value, float("nan")))
        return {stat: result[stat] for stat, _ in entries}
