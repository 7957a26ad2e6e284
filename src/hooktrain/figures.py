"""Pictures of what plugins measured, drawn with matplotlib: axes, labels and a colour bar say what the colours mean.

Drawing a figure takes about 0.1 s here (2026-11-23), so the session draws a few times per fit, not per step
(``HookSession.draw``). Figures are drawn off-screen (``FigureCanvasAgg``): no pyplot, no display needed.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

CMAP = "magma"
SMALLEST_SHARE = 1e-4  # the darkest colour of a distribution picture: 1 value in 10,000


def to_image(figure) -> Tensor:
    """A matplotlib figure as a ``(3, H, W)`` float tensor in [0, 1], what ``Writer.write_image`` takes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float().div_(255)


def step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around logging steps, so each column spans its step (``pcolormesh`` takes edges)."""
    width = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    middles = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - width / 2], middles, [steps[-1] + width / 2]])


def spans_decades(values: np.ndarray) -> bool:
    """Positive values whose largest is at least 100 times the smallest: a log colour scale shows them better."""
    return values.size > 0 and bool((values > 0).all()) and values.max() >= 100 * values.min()


def layer_picture(title: str, values: np.ndarray, steps: np.ndarray, layers: Sequence[str]):
    """One statistic for every layer: rows = layers (model order, top down), columns = logging steps, colour = value.

    Cells a layer did not record stay blank. The colour scale is logarithmic where the values span decades.
    """
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    finite = values[np.isfinite(values)]
    log = spans_decades(finite)
    norm = LogNorm(finite.min(), finite.max()) if log else Normalize(finite.min(), finite.max()) if finite.size else None
    figure = Figure(figsize=(7, 1.6 + 0.3 * len(layers)), dpi=90, layout="constrained")
    axes = figure.add_subplot()
    mesh = axes.pcolormesh(step_edges(steps), np.arange(len(layers) + 1), np.ma.masked_invalid(values), norm=norm, cmap=CMAP)
    axes.set_yticks(np.arange(len(layers)) + 0.5, layers)
    axes.invert_yaxis()
    axes.set_xlabel("step")
    axes.set_title(title)
    figure.colorbar(mesh, ax=axes, label="log scale" if log else None)
    return figure


def distribution_picture(title: str, shares: np.ndarray, steps: np.ndarray, low: float, high: float):
    """A layer's value distribution over time: columns = logging steps, rows = value bins over ``[low, high]``.

    ``shares`` is ``(bins + 2, columns)``: row 0 the share of values below ``low``, the last row the share
    above ``high`` (drawn as their own strips, not piled into the edge bins), the rows between the bins.
    Colour = share of values, on a log scale from ``SMALLEST_SHARE`` to 1, the same for every column.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    norm = LogNorm(SMALLEST_SHARE, 1.0, clip=True)
    edges = step_edges(steps)
    figure = Figure(figsize=(7, 3.6), dpi=90, layout="constrained")
    above, middle, below = figure.subplots(3, 1, sharex=True, height_ratios=[1, 10, 1])
    strips = ((above, shares[-1:], [high, high + 1], f"> {high:.3g}"), (below, shares[:1], [low - 1, low], f"< {low:.3g}"))
    for axes, row, span, label in strips:
        axes.pcolormesh(edges, span, np.ma.masked_less_equal(row, 0), norm=norm, cmap=CMAP)
        axes.set_yticks([sum(span) / 2], [label])
        axes.set_facecolor("black")
    bins = np.linspace(low, high, shares.shape[0] - 1)
    mesh = middle.pcolormesh(edges, bins, np.ma.masked_less_equal(shares[1:-1], 0), norm=norm, cmap=CMAP)
    middle.set_facecolor("black")
    middle.set_ylabel("value")
    below.set_xlabel("step")
    above.set_title(title)
    figure.colorbar(mesh, ax=[above, middle, below], label="share of values (log scale)")
    return figure
