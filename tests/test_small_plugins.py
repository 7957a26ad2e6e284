"""weight_stats, module_timer and nan_guard against hand computations."""

from collections import OrderedDict

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from hooktrain import HookSession
from hooktrain.errors import NonFiniteError
from hooktrain.models import MLP
from plugins.module_timer import ModuleTimer
from plugins.nan_guard import NanGuard
from plugins.weight_stats import WeightStats
from test_session import RecordingWriter, fit


class Snapshots(Callback):
    """The head's weights at the start and end of the first batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = torch.cat([p.detach().flatten().clone() for p in pl_module.model.head.parameters()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after = torch.cat([p.detach().flatten().clone() for p in pl_module.model.head.parameters()])


def test_weight_stats_measure_the_optimizer_update():
    snapshots = Snapshots()
    task, _ = fit([WeightStats(name="w", targets=["head"], ema_decay=0.5)], steps=1, callbacks=[snapshots])
    expected = (snapshots.after - snapshots.before).norm() / snapshots.after.norm()
    torch.testing.assert_close(task.plugin_state.w.ema_update_ratio, expected.reshape(1))


def test_module_timer_sums_forward_and_backward_time_per_module():
    plugin = ModuleTimer(name="timer", targets=["fc1", "head"], every_n_steps=2)
    task, _ = fit([plugin], steps=4)
    state = task.plugin_state.timer
    assert (state.total_forward_ms > 0).all() and (state.total_backward_ms > 0).all()
    assert (state.total_forward_ms < 1000).all()
    assert plugin._started == {}  # every start was matched by a stop


def test_module_timer_records_the_time_between_pre_and_post_hooks(monkeypatch):
    clock = iter([10.0, 10.25])
    monkeypatch.setattr("plugins.module_timer.time.perf_counter", lambda: next(clock))
    plugin = ModuleTimer(name="timer")
    model = MLP(in_features=4, hidden_sizes=[], num_classes=2)
    session = HookSession(model, [plugin]).setup()
    ctx = session._contexts["timer"][0][1]
    plugin.forward_pre(ctx, model.head, ())
    plugin.forward(ctx, model.head, (), None)
    assert session._stats["timer"].combined()["forward_ms"].tolist() == [250.0]


class Poison(Callback):
    """Makes fc1's weights NaN before step 2's forward."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            with torch.no_grad():
                pl_module.model.fc1.weight.fill_(float("nan"))


def test_nan_guard_names_the_first_module_in_forward_order():
    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    with pytest.raises(NonFiniteError, match=r"nan_guard: at step 2, the output of module 'fc1' is not finite"):
        fit([NanGuard(name="nan_guard")], steps=5, model=model, callbacks=[Poison()])
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == 0


def infinite_gradient_step(scaler=None):
    """One backward with finite outputs and an infinite gradient from the loss, then nan_guard's check."""
    guard = NanGuard(name="nan_guard")
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    with HookSession(model, [guard]) as session:
        session.info.scaler = scaler
        with session.step(0):  # nan_guard checks when the step finishes
            (model(torch.randn(2, 4)) * float("inf")).sum().backward()
            session.before_optimizer_step()


def test_nan_guard_names_where_a_bad_gradient_entered():
    with pytest.raises(NonFiniteError, match=r"the parameter gradient of module 'head'"):
        infinite_gradient_step()


class SquareRoot(torch.nn.Module):
    def forward(self, x):
        return x.abs().sqrt()


def test_nan_guard_names_where_a_bad_gradient_entered_mid_model():
    """``sqrt``'s gradient at 0 is infinite: fc1's parameter gradients turn non-finite, the head's stay finite."""
    model = torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(4, 3), root=SquareRoot(), head=torch.nn.Linear(3, 2)))
    torch.nn.init.zeros_(model.fc1.weight)
    torch.nn.init.zeros_(model.fc1.bias)
    with pytest.raises(NonFiniteError, match=r"at step 0, the parameter gradient of module 'fc1' is not finite"):
        with HookSession(model, [NanGuard(name="nan_guard")]) as session, session.step(0):
            model(torch.randn(2, 4)).sum().backward()
            assert model.head.weight.grad.isfinite().all()
            session.before_optimizer_step()


def test_nan_guard_checks_each_parameter_gradient_of_a_module():
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    with pytest.raises(NonFiniteError, match=r"the parameter gradient of module 'head'"):
        with HookSession(model, [NanGuard(name="nan_guard")]) as session, session.step(0):
            model(torch.randn(2, 4)).sum().backward()
            model.head.bias.grad[1] = float("nan")  # the weight's gradient stays finite
            session.before_optimizer_step()


def test_nan_guard_sums_half_precision_outputs_in_float32():
    model = MLP(in_features=4, hidden_sizes=[64], num_classes=2).half()
    torch.nn.init.ones_(model.fc1.weight)
    with HookSession(model, [NanGuard(name="nan_guard")]) as session, session.step(0):
        output = model.fc1(torch.full((64, 4), 100.0, dtype=torch.half))
        assert output.isfinite().all() and output.sum().isinf()  # 4096 values near 400: past fp16's largest, 65504
    assert session.state.nan_guard.checked_steps.item() == 1


def test_nan_guard_says_which_selected_modules_it_checks_outputs_of_only(caplog):
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    HookSession(model, [NanGuard(name="nan_guard", targets=["act1", "head"])]).setup()
    assert "nan_guard checks the outputs of ['act1'], modules without parameters, but not their gradients" in caplog.text


def test_nan_guard_leaves_overflowing_fp16_gradients_to_the_grad_scaler():
    # Under 16-mixed the first steps overflow by design: the GradScaler skips them and lowers its scale.
    infinite_gradient_step(scaler=torch.amp.GradScaler("cpu"))  # no error


def test_nan_guard_logs_the_largest_magnitudes_on_logging_steps_and_catches_a_lone_minus_inf():
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    writer, x = RecordingWriter(), torch.randn(5, 4)
    with HookSession(model, [NanGuard(name="nan_guard", log_every_n_steps=2)], writers=[writer]) as session:
        for step in range(3):
            with session.step(step):
                model.zero_grad()
                model(x).sum().backward()
                session.before_optimizer_step()
        assert writer.scalars_at[0]["watch/nan_guard/output_absmax/fc1"] == pytest.approx(model.fc1(x).abs().max().item())
        head_absmax = max(param.grad.abs().max().item() for param in model.head.parameters())  # each step's gradient alike
        assert writer.scalars_at[0]["watch/nan_guard/grad_absmax/head"] == pytest.approx(head_absmax)
        assert 1 not in writer.scalars_at and "watch/nan_guard/output_absmax/fc1" in writer.scalars_at[2]
        with torch.no_grad():
            model.fc1.bias[0] = -float("inf")  # one column of -inf: the largest value stays finite
        with pytest.raises(NonFiniteError, match=r"at step 3, the output of module 'fc1' is not finite"), session.step(3):
            model(x).sum().backward()


def test_nan_guard_hears_of_a_nan_in_another_process():
    def other_rank_nan_last(tensor, op):  # another process whose last value is NaN; a max all-reduce drops NaN, as gloo's may
        other = tensor.clone()
        other[-1] = float("nan")
        return tensor + other if op == "sum" else torch.fmax(tensor, other)

    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)  # outputs differ between processes (gradients do not: DDP averages them)
    with pytest.raises(NonFiniteError, match=r"the output of module 'head'"):
        with HookSession(model, [NanGuard(name="nan_guard")], all_reduce=other_rank_nan_last) as session, session.step(0):
            model(torch.randn(2, 4)).sum().backward()
            session.before_optimizer_step()


def test_nan_guard_checks_the_evaluation_phases_it_is_given():
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    guard = NanGuard(name="nan_guard", phases=["train", "validate"])
    with HookSession(model, [guard]) as session:
        for _ in range(2):  # healthy phases pass
            with torch.no_grad(), session.evaluating("validate"):
                model(torch.randn(2, 4))
        assert not guard._ran  # what a phase's calls were is dropped when it ends: a long one does not grow it
        with torch.no_grad():
            model.fc1.bias[0] = float("nan")  # fc1's output and, through it, the head's: the first in forward order is named
        with pytest.raises(NonFiniteError, match=r"in the validate phase after step 0, the output of module 'fc1' is not finite"):
            with torch.no_grad(), session.evaluating("validate"):
                model(torch.randn(2, 4))
                model(torch.randn(2, 4))


def test_nan_guard_is_silent_on_healthy_steps():
    task, _ = fit([NanGuard(name="nan_guard")], steps=4)
    assert task.plugin_state.nan_guard.checked_steps.item() == 4


def test_nan_guard_names_the_module_on_a_logging_step_too(make_cfg):
    from hooktrain.run import build_run

    run = build_run(make_cfg("model=mlp", "plugins=[nan_guard]", "trainer.log_every_n_steps=1"))  # every step logs the loss
    run.trainer.callbacks.insert(0, Poison())
    with pytest.raises(NonFiniteError, match=r"nan_guard: at step 2, the output of module 'fc1' is not finite"):
        run.trainer.fit(run.task, datamodule=run.datamodule)
