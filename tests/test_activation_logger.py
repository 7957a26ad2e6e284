"""activation_logger's numbers against hand computations."""

import pytest
import torch
from torch import nn

from plugins.activation_logger import COLORS, ActivationLogger, activation_stats, fixed_histogram
from test_session import fit


def test_statistics_match_a_hand_computation():
    x = torch.tensor([[0.0, 1.0, -2.0], [0.0, 3.0, 0.995]])  # (B=2, units=3); unit 0 is dead
    mean, std, low, high, zeros, dead, saturated = activation_stats(x, saturation=0.99).tolist()
    values = [0.0, 1.0, -2.0, 0.0, 3.0, 0.995]
    assert mean == pytest.approx(sum(values) / 6)
    assert std == pytest.approx(torch.tensor(values, dtype=torch.float64).std().item())
    assert (low, high) == (-2.0, 3.0)
    assert zeros == pytest.approx(2 / 6) and dead == pytest.approx(1 / 3)
    assert saturated == pytest.approx(4 / 6)  # |1|, |-2|, |3|, |0.995| >= 0.99


def test_dead_units_are_channels_of_a_conv_output():
    x = torch.randn(4, 3, 5, 5)
    x[:, 1] = 0
    assert activation_stats(x, 0.99)[5].item() == pytest.approx(1 / 3)


def test_fixed_histogram_counts_fractions_with_outliers_at_the_ends():
    hist = fixed_histogram(torch.tensor([-10.0, -0.9, 0.1, 0.2, 10.0]), low=-1.0, high=1.0, bins=4)
    assert hist.tolist() == pytest.approx([0.4, 0.0, 0.4, 0.2])  # [-1,-.5): -10, -0.9; [0,.5): 0.1, 0.2; [.5,1]: 10


def test_buffers_follow_the_recorded_steps():
    plugin = ActivationLogger(name="act", targets=["fc1"], every_n_steps=2, bins=8, image_width=5, histograms=False)
    task, _ = fit([plugin], steps=5)  # active on steps 0, 2, 4
    state = task.plugin_state.act
    low, high = state.picture_range[0].tolist()
    assert low < high  # set from the first step's values, then kept
    assert state.history.shape == (1, 8, 5)
    filled = (state.history.sum(dim=1) > 0).tolist()[0]
    assert filled == [False, False, True, True, True]  # three columns, newest on the right
    assert torch.allclose(state.history[0, :, -1].sum(), torch.tensor(1.0))  # fractions of one histogram
    assert torch.isfinite(state.ema_mean).all() and 0 <= state.ema_zero_fraction.item() <= 1


def test_picture_is_an_image_per_module_in_unit_range():
    plugin = ActivationLogger(name="act", bins=4, image_width=3)
    state = nn.Module()
    plugin.setup(state, {"a": nn.Linear(1, 1), "b": nn.Linear(1, 1)})
    stats = {stat: torch.zeros(2) for stat in ("mean", "std", "min", "max", "zero_fraction", "dead_fraction", "saturated_fraction")}
    stats["distribution"] = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0.5, 0.5]])
    picture = plugin.update(state, stats)["over_time"]
    assert picture.shape == (2, 3, 4, 3) and 0 <= picture.min() and picture.max() <= 1  # (modules, RGB, bins, width)
    brightest, darkest = COLORS[-1], COLORS[0]
    assert torch.allclose(picture[0, :, -1, -1], brightest)  # the lowest bin is drawn at the bottom row
    assert torch.allclose(picture[0, :, 0, -1], darkest) and torch.allclose(picture[0, :, 0, 0], darkest)  # empty bin, empty column
