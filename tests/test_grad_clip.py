"""grad_clip against hand computations on a tiny model."""

import pytest
import torch
import torch.nn.functional as F

from hooktrain import HookSession, HooktrainError
from hooktrain.models import MLP
from plugins.grad_clip import GradClip


def attached(plugin):
    """A session on a tiny MLP, inside step 0 (the plugin's hooks attached)."""
    torch.manual_seed(0)
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    session = HookSession(model, [plugin]).setup()
    session.start_step(0)
    return session, model


def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(5, 4, generator=generator), torch.tensor([0, 1, 1, 0, 1])


@pytest.mark.parametrize("max_norm", [0.05, 10.0])
@pytest.mark.parametrize("reads_the_norm", [True, False], ids=["cpu", "accelerator-path"])
def test_clip_by_norm_at_the_output_scales_what_flows_back(max_norm, reads_the_norm, monkeypatch):
    if not reads_the_norm:  # the path of tensors on an accelerator, where the norm is not read on the host
        monkeypatch.setattr("plugins.grad_clip.cpu_value", lambda value: None)
    session, model = attached(GradClip(name="clip", targets=["head"], max_norm=max_norm))
    x, y = batch()
    hidden = model.act1(model.fc1(x)).detach()
    logits = hidden @ model.head.weight.T + model.head.bias
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    g = logits.grad  # (5, 2): what reaches head's output
    assert 0.05 < g.norm() < 10.0
    clipped = g * min(1.0, max_norm / (g.norm().item() + 1e-6))
    model.zero_grad()

    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(model.head.weight.grad, clipped.T @ hidden)
    torch.testing.assert_close(model.head.bias.grad, clipped.sum(0))
    stats = session._stats["clip"].combined()
    torch.testing.assert_close(stats["_pre_clip_norm"], g.norm().reshape(1))
    logged = session.plugins[0].update(session.state.clip, stats)  # derived once per step, for every layer together
    torch.testing.assert_close(logged["pre_clip_norm_max"], g.norm().reshape(1))
    clips = int(max_norm < 10.0)
    assert logged["clipped_fraction"].tolist() == [clips] and session.state.clip.clipped_steps.tolist() == [clips]
    session.close()


def test_clip_by_value_at_the_output_clamps_elements():
    session, model = attached(GradClip(name="clip", targets=["head"], mode="value", clip_value=0.02))
    x, y = batch()
    hidden = model.act1(model.fc1(x)).detach()
    logits = hidden @ model.head.weight.T + model.head.bias
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    clipped = logits.grad.clamp(-0.02, 0.02)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(model.head.weight.grad, clipped.T @ hidden)
    logged = session.plugins[0].update(session.state.clip, session._stats["clip"].combined())
    assert logged["clipped_fraction"].tolist() == [float((logits.grad.abs() > 0.02).any())] == [1.0]
    torch.testing.assert_close(logged["pre_clip_norm_max"], logits.grad.norm().reshape(1))
    session.close()


@pytest.mark.parametrize("settings", [{"max_norm": 0.05}, {"mode": "value", "clip_value": 0.02}])
def test_clipping_under_a_grad_scaler_matches_fp32(settings):
    grads = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        session, model = attached(GradClip(name="clip", **settings))
        session.info.scaler = scaler
        x, y = batch()
        loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        grads.append({key: param.grad / (scaler.get_scale() if scaler else 1.0) for key, param in model.named_parameters()})
        assert session._stats["clip"].combined()["_pre_clip_norm"][-1] > 0.05  # the head's gradient was clipped
        session.close()
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, msg=key)


def test_clip_parameters_per_layer_and_count_in_buffers():
    plugin = GradClip(name="clip", targets=["fc1", "head"], max_norm=0.1, at="parameters")
    session, model = attached(plugin)
    assert plugin.hook_kinds() == ["before_optimizer_step"]  # no autograd hook at all in this mode
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    before = [torch.cat([p.grad.flatten() for p in layer.parameters()]) for layer in (model.fc1, model.head)]
    session.before_optimizer_step()
    for layer, grad in zip((model.fc1, model.head), before):
        after = torch.cat([p.grad.flatten() for p in layer.parameters()])
        torch.testing.assert_close(after, grad * min(1.0, 0.1 / (grad.norm().item() + 1e-6)))
    state = session.state.clip
    plugin.update(state, session._stats["clip"].combined())
    expected = [int(grad.norm() > 0.1) for grad in before]
    assert state.clipped_steps.tolist() == expected
    torch.testing.assert_close(state.max_pre_clip_norm, torch.stack([grad.norm() for grad in before]))
    session.close()


def test_logged_values_cover_every_step_since_the_last_logging_step():
    plugin = GradClip(name="clip", max_norm=1.0, log_every_n_steps=2)
    state = torch.nn.Module()
    plugin.setup(state, {"a": torch.nn.Linear(1, 1), "b": torch.nn.Linear(1, 1)})
    logged = []
    nan = float("nan")  # a module not called in a step (a branch not taken) records nothing
    for step, norms in enumerate([[2.0, 0.5], [0.5, 3.0], [0.5, 0.2], [nan, 0.1]]):
        plugin.info.step = step
        logged.append(plugin.update(state, {"_pre_clip_norm": torch.tensor(norms)}))
    assert logged[0]["clipped_fraction"].tolist() == [1.0, 0.0] and logged[1] == {}
    assert logged[2]["clipped_fraction"].tolist() == [0.0, 0.5]  # steps 1 and 2: b clipped at step 1
    assert logged[2]["pre_clip_norm_max"].tolist() == [0.5, 3.0]  # the spike at step 1 shows at step 2
    assert state.clipped_steps.tolist() == [1, 1] and state.max_pre_clip_norm.tolist() == [2.0, 3.0]  # a NaN neither counts nor sticks


def test_a_zero_gradient_passes_unchanged():
    session, model = attached(GradClip(name="clip", max_norm=1.0))
    x, _ = batch()
    (model(x).sum() * 0).backward()  # every output's gradient is 0: its norm too
    assert all((param.grad == 0).all() for param in model.parameters())
    assert session._stats["clip"].combined()["_pre_clip_norm"].tolist() == [0.0, 0.0]
    session.close()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"max_norm": 0}, r"`plugins.clip.max_norm` must be a number > 0, got 0"),
        ({"mode": "l2"}, r"`plugins.clip.mode` must be one of \['norm', 'value'\], got 'l2'"),
        ({"at": "input"}, r"`plugins.clip.at` must be one of \['output', 'parameters'\], got 'input'"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(HooktrainError, match=message):
        GradClip(name="clip", **kwargs)
