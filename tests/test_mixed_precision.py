"""Every plugin under a GradScaler records and steers as in fp32: hooks see scaled gradients, plugins must not."""

import pytest
import torch
import torch.nn.functional as F

from conftest import PLUGINS, ROOT
from hooktrain import HookSession
from hooktrain.build import build_plugins
from hooktrain.models import MLP
from hooktrain.registry import plugin_class
from hooktrain.testing import plugin_config


def one_step(name, tmp_path, scaler=None):
    """One optimizer step of an MLP with the plugin active: what its update received, and the final parameter gradients."""
    (plugin,) = build_plugins(plugin_config(name, tmp_path, ROOT / "conf").plugins)
    torch.manual_seed(0)
    model = MLP(in_features=16, hidden_sizes=[8, 8], num_classes=3)  # fc1, fc2, head
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(6, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    seen = {}
    update = plugin.update
    plugin.update = lambda state, stats: seen.update(stats) or update(state, stats)
    with HookSession(model, [plugin]) as session, session.step(0):
        session.info.scaler, session.info.total_steps = scaler, 10
        loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)  # as Lightning does before on_before_optimizer_step
        session.before_optimizer_step()
        grads = {key: param.grad.clone() for key, param in model.named_parameters()}
        scaler.step(optimizer) if scaler else optimizer.step()
    return seen, grads


@pytest.mark.parametrize("name", PLUGINS)
def test_a_plugin_under_a_grad_scaler_matches_fp32(name, tmp_path):
    reference_stats, reference_grads = one_step(name, tmp_path)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    stats, grads = one_step(name, tmp_path, scaler)
    assert scaler.get_scale() == 2.0**12  # no overflow: the scaled step was taken
    for key, grad in reference_grads.items():  # what steering plugins (clipping, ablation) did to the gradients
        torch.testing.assert_close(grads[key], grad, rtol=1e-5, atol=1e-8, msg=f"{name}: gradient of {key}")
    if plugin_class(ROOT / "conf", name).deterministic_state:  # wall-clock times are not
        for key in reference_stats.keys() & stats.keys():
            torch.testing.assert_close(stats[key], reference_stats[key], rtol=1e-5, atol=1e-8, equal_nan=True, msg=f"{name}: {key}")
