"""activation_logger's numbers against hand computations, and its picture range following the data."""

import pytest
import torch
from torch import nn

from hooktrain.figures import to_image
from hooktrain.plugin import HookContext, StepInfo
from hooktrain.stats import StepStats
from plugins.activation_logger import ActivationLogger, rebin, stats_for, std_mean
from test_session import fit


def recorded(plugin, module, output, picture_range=None):
    """What the plugin's forward hook records for ``output`` of ``module`` (one call, one module), and its state."""
    state = nn.Module()
    plugin.setup(state, {"m": module})
    if picture_range is not None:
        state.picture_range[0] = torch.tensor(picture_range)
    stats = StepStats(1)
    plugin.forward(HookContext("m", 0, stats, StepInfo(), state), module, (), output)
    return {stat: values[0] for stat, values in stats.combined().items()}, state


def test_each_module_kind_gets_the_statistics_that_can_vary_there():
    assert stats_for(nn.ReLU()) == ("mean", "std", "max", "zero_fraction", "dead_fraction", "out_of_range")  # min is always 0
    assert stats_for(nn.Tanh()) == ("mean", "std", "max", "min", "saturated_fraction", "out_of_range")
    assert stats_for(nn.Linear(2, 2)) == ("mean", "std", "max", "min", "out_of_range")  # never exactly 0, no bound


def test_relu_statistics_match_a_hand_computation():
    x = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.5]])  # (B=2, units=3); unit 0 is dead, unit 2 is not
    stats, _ = recorded(ActivationLogger(name="a"), nn.ReLU(), x)
    values = torch.tensor([0.0, 1.0, 0.0, 0.0, 3.0, 0.5], dtype=torch.float64)
    assert stats["mean"].item() == pytest.approx(values.mean().item()) and stats["std"].item() == pytest.approx(values.std().item())
    assert stats["max"].item() == 3.0 and "min" not in stats and "saturated_fraction" not in stats
    assert stats["zero_fraction"].item() == pytest.approx(3 / 6) and stats["dead_fraction"].item() == pytest.approx(1 / 3)


def test_std_is_exact_for_values_far_from_zero_and_zero_for_one_value():
    x = (1e4 + 0.1 * torch.randn(1000, dtype=torch.float64)).float()  # a sum of squares minus the squared sum would cancel
    std, mean = std_mean(x.view(10, 100))
    assert std.item() == pytest.approx(x.double().std().item(), rel=1e-4) and mean.item() == pytest.approx(x.double().mean().item())
    assert [value.item() for value in std_mean(torch.tensor([[2.5]]))] == [0.0, 2.5]


def test_dead_units_are_channels_of_a_conv_output():
    x = torch.rand(4, 3, 5, 5)
    x[:, 1] = 0
    stats, _ = recorded(ActivationLogger(name="a"), nn.ReLU(), x)
    assert stats["dead_fraction"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "module, x",
    [
        (nn.Tanh(), [-0.99, -0.5, 0.0, 0.97, 0.985, 1.0]),  # within 0.01 * 2 of -1 or 1
        (nn.Sigmoid(), [0.005, 0.3, 0.5, 0.98, 0.995, 1.0]),  # within 0.01 of 0 or 1
    ],
)
def test_saturation_counts_values_near_either_bound_of_a_bounded_activation(module, x):
    stats, _ = recorded(ActivationLogger(name="a", saturation=0.01), module, torch.tensor(x).view(1, -1))
    assert stats["saturated_fraction"].item() == pytest.approx(3 / 6)
    assert "zero_fraction" not in stats


def test_values_outside_the_picture_range_are_counted_apart_not_piled_into_the_edge_bins():
    x = torch.tensor([[-1.0, 0.1, 0.6, 0.9, 2.0]])
    stats, _ = recorded(ActivationLogger(name="a", bins=4), nn.Tanh(), x, picture_range=[0.0, 1.0])
    assert stats["_distribution"].tolist() == pytest.approx([0.2, 0.2, 0.0, 0.2, 0.2, 0.2])  # below, 4 bins, above
    assert stats["out_of_range"].item() == pytest.approx(0.4)


def test_rebinning_moves_each_bin_to_the_wider_bin_holding_its_centre():
    shares = torch.tensor([[0.25, 0.25, 0.25, 0.25]]).unsqueeze(2)  # (modules, bins, columns)
    wider = rebin(shares, torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 2.0]]))
    assert wider[0, :, 0].tolist() == [0.5, 0.5, 0.0, 0.0]
    same = rebin(shares, torch.tensor([[-3.0, 7.0]]), torch.tensor([[-3.0, 7.0]]))
    assert torch.equal(same, shares)


def test_the_range_widens_with_the_values_and_the_stored_columns_follow():
    plugin = ActivationLogger(name="a", bins=4, image_width=3)
    state = nn.Module()
    plugin.setup(state, {"m": nn.ReLU()})
    distribution = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])  # every value in the top bin of [0, 1]
    state.picture_range[0] = torch.tensor([0.0, 1.0])
    plugin.update(state, {"_distribution": distribution, "_low": torch.tensor([0.0]), "_high": torch.tensor([3.0])})
    low, high = state.picture_range[0].tolist()
    assert low == 0.0 and high == pytest.approx(3.0 + 0.25 * 3.0)  # widened on the side that grew, by a quarter of the span
    column = state.distribution[0, :, -1]
    assert column.sum().item() == pytest.approx(1.0) and column[1:-1].argmax().item() == 0  # the old top bin's centre 0.875 of [0, 3.75]
    assert state.distribution_steps.tolist() == [-1, -1, 0]
    plugin.update(state, {"_distribution": distribution, "_low": torch.tensor([0.5]), "_high": torch.tensor([2.0])})
    assert state.picture_range[0].tolist() == [low, high]  # values inside: the range stays
    plugin.update(state, {"_distribution": distribution, "_low": torch.tensor([-1.0]), "_high": torch.tensor([2.0])})
    assert state.picture_range[0].tolist() == pytest.approx([-1.0 - 0.25 * (high + 1.0), high])  # now the low side grows


def test_buffers_follow_the_logged_steps_and_a_picture_is_drawn_per_module():
    plugin = ActivationLogger(name="act", every_n_steps=2, bins=8, image_width=5, histograms=False)
    task, _ = fit([plugin], steps=5)  # active on steps 0, 2, 4; the MLP has one ReLU
    state = task.plugin_state.act
    assert state.distribution.shape == (1, 10, 5) and state.distribution_steps.tolist() == [-1, -1, 0, 2, 4]
    torch.testing.assert_close(state.distribution[0, :, -3:].sum(dim=0), torch.ones(3))  # shares of one step's values
    assert torch.isfinite(state.ema_mean).all() and 0 <= state.ema_zero_fraction.item() <= 1
    figures = plugin.draw(state)
    assert list(figures) == ["over_time/act1"]
    image = to_image(figures["over_time/act1"])
    assert image.shape[0] == 3 and image.shape[1] > 200 and 0 <= image.min() and image.max() <= 1
