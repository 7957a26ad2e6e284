"""The hook session on a tiny MLP, trained for real by Lightning on synthetic data or driven by hand."""

import copy
import pickle
import time
import weakref
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

import hooktrain.session as session_module
from hooktrain import CSVWriter, HookCallback, HookPlugin, HookSession, HooktrainError, PluginHookError, Writer
from hooktrain.data import SyntheticDataModule
from hooktrain.models import MLP
from hooktrain.plugin import HookContext, StepInfo
from hooktrain.stats import StepStats, absmax
from hooktrain.task import ClassifierTask
from hooktrain.testing import identical
from test_train import read_events

HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(module, name)) for module in model.modules() for name in HOOK_DICTS)


class StepRecorder(HookPlugin):
    """Records, on the host, the step of each forward hook call (test only: it syncs nothing, it stores ints)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[tuple[int, str]] = []

    def forward(self, ctx, module, args, output):
        self.calls.append((ctx.step, ctx.module_name))
        ctx.record("output_mean", output.mean())


class HookCounter(Callback):
    """Counts the hooks on the model at each training batch, after the session has attached them."""

    def __init__(self):
        self.counts: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counts[trainer.global_step] = hook_count(pl_module.model)


def fit(plugins, *, steps=6, accumulate=1, callbacks=(), model=None, logger=False):
    model = model or MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    task = ClassifierTask(model, optimizer=partial(torch.optim.SGD, lr=0.1))
    data = SyntheticDataModule(num_samples=256, num_classes=3, image_size=4, batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, accumulate_grad_batches=accumulate, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[HookCallback(plugins), *callbacks],
    )
    trainer.fit(task, datamodule=data)
    return task, trainer


def test_hooks_are_attached_only_on_active_steps_and_removed_after_fit():
    plugin = StepRecorder(name="rec", every_n_steps=3, targets=["fc1", "head"])
    counter = HookCounter()
    task, _ = fit([plugin], steps=7, callbacks=[counter])
    assert sorted({step for step, _ in plugin.calls}) == [0, 3, 6]
    assert {module for _, module in plugin.calls} == {"fc1", "head"}
    assert counter.counts == {0: 2, 1: 0, 2: 0, 3: 2, 4: 0, 5: 0, 6: 2}  # forward hooks only, two modules
    assert hook_count(task.model) == 0


def test_a_plugin_active_on_every_step_is_attached_once_and_silent_between_steps():
    plugin = StepRecorder(name="rec", targets=["head"])
    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    handles = []
    with HookSession(model, [plugin]) as session:
        for step in range(3):
            with session.step(step):
                model(torch.randn(2, 16))
                handles.append(tuple(model.head._forward_hooks))
            model(torch.randn(2, 16))  # between steps (a callback's forward): the hooks stay, closed
    assert len(handles) == 3 and len(set(handles)) == 1  # registered at step 0, kept: no detach and attach per step
    assert plugin.calls == [(0, "head"), (1, "head"), (2, "head")]
    assert hook_count(model) == 0


def test_cadence_counts_optimizer_steps_under_gradient_accumulation():
    plugin = StepRecorder(name="rec", every_n_steps=2, targets=["head"])
    fit([plugin], steps=4, accumulate=3)
    assert plugin.calls == [(0, "head")] * 3 + [(2, "head")] * 3  # 3 micro-batches per optimizer step


def test_only_overridden_hook_kinds_are_registered():
    class BackwardOnly(HookPlugin):
        def backward(self, ctx, module, grad_input, grad_output):
            pass

    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    session = HookSession(model, [BackwardOnly(name="b")]).setup()
    session.attach(session.plugins[0])
    assert {name: len(model.fc1.__dict__[name]) for name in HOOK_DICTS} == {
        "_forward_pre_hooks": 0, "_forward_hooks": 0, "_backward_pre_hooks": 0, "_backward_hooks": 1,
    }
    assert session.is_attached(session.plugins[0])
    session.close()
    assert hook_count(model) == 0


@pytest.mark.parametrize("kind", ["forward", "backward", "output_grad"])
def test_an_exception_in_a_hook_names_plugin_kind_and_module_and_leaves_no_hook(kind):
    class Broken(HookPlugin):
        def forward(self, ctx, module, args, output):
            if kind == "forward":
                raise ValueError("boom")

        def backward(self, ctx, module, grad_input, grad_output):
            if kind == "backward":
                raise ValueError("boom")

        def output_grad(self, ctx, module, grad):
            if kind == "output_grad":
                raise ValueError("boom")

    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    with pytest.raises(PluginHookError, match=rf"plugin 'broken' failed at step 0 in its {kind} hook on module 'fc1': ValueError: boom"):
        fit([Broken(name="broken", targets=["fc1"])], model=model)
    assert hook_count(model) == 0


class GradTaker(HookPlugin):
    """Keeps the gradient each hook kind sees at each module (test only), optionally replacing it by ``factor`` times it."""

    def __init__(self, factor=None, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.seen = factor, {}

    def backward(self, ctx, module, grad_input, grad_output):
        self.seen[("backward", ctx.module_name)] = grad_output[0].clone()

    def output_grad(self, ctx, module, grad):
        self.seen[("output_grad", ctx.module_name)] = grad.clone()
        return None if self.factor is None else grad * self.factor


class OutputGradOnly(GradTaker):
    """GradTaker without a full backward hook: one a compiled session refuses, and one that fails before ReLU(inplace=True)."""

    backward = HookPlugin.backward


def backward_with(plugin, model, x):
    with HookSession(model, [plugin]) as session, session.step(0):
        model(x).logsumexp(dim=1).sum().backward()
    return hook_count(model)


def test_output_grad_sees_what_a_full_backward_hook_sees_and_its_return_replaces_it():
    torch.manual_seed(0)
    model, x = MLP(in_features=16, hidden_sizes=[8], num_classes=3), torch.randn(5, 1, 4, 4)
    plugin = GradTaker(name="g", targets=["fc1", "head"])
    assert backward_with(plugin, model, x) == 0
    for name in ("fc1", "head"):
        assert torch.equal(plugin.seen[("output_grad", name)], plugin.seen[("backward", name)])

    expected = [param.grad.clone() for param in model.parameters()]
    model.zero_grad()
    backward_with(GradTaker(factor=0.5, name="halve", targets=["head"]), model, x)
    for param, full in zip(model.parameters(), expected):  # every parameter lies at or before the head
        torch.testing.assert_close(param.grad, full * 0.5)


def test_an_output_grad_hook_does_nothing_once_its_step_has_finished():
    """Compiled runs keep hooks attached and gated: a graph back-propagated after the step ended meets a closed gate."""
    model, x = MLP(in_features=16, hidden_sizes=[8], num_classes=3), torch.randn(5, 1, 4, 4)
    plugin = OutputGradOnly(factor=0.5, name="halve", targets=["head"])
    with HookSession(model, [plugin], compiled=True) as session:
        session.start_step(0)
        loss = model(x).logsumexp(dim=1).sum()
        session.finish_step()
        loss.backward()
    assert not plugin.seen
    expected = torch.autograd.grad(model(x).logsumexp(dim=1).sum(), model.head.weight)[0]
    torch.testing.assert_close(model.head.weight.grad, expected)


def test_output_grad_works_where_an_inplace_op_follows_the_module():
    torch.manual_seed(0)
    model, x = MLP(in_features=16, hidden_sizes=[8], num_classes=3), torch.randn(5, 1, 4, 4)
    inplace = copy.deepcopy(model)
    inplace.act1 = nn.ReLU(inplace=True)
    seen = []
    for net in (model, inplace):
        plugin = OutputGradOnly(name="g", targets=["fc1"])
        backward_with(plugin, net, x)
        seen.append(plugin.seen[("output_grad", "fc1")])
    assert torch.equal(seen[0], seen[1])


def test_plugin_state_is_buffers_in_the_lightning_state_dict_not_in_the_model():
    class Counter(HookPlugin):
        def setup(self, state, modules):
            state.register_buffer("calls", torch.zeros(len(modules)))

        def forward(self, ctx, module, args, output):
            ctx.record("one", torch.ones(()))

        def update(self, state, stats):
            state.calls.add_(stats["one"])
            return {}

    task, _ = fit([Counter(name="counter", every_n_steps=2)], steps=5)
    assert torch.equal(task.state_dict()["plugin_state.counter.calls"], torch.full((2,), 3.0))  # steps 0, 2, 4
    assert all(not key.startswith("plugin_state") for key in task.model.state_dict())


def test_a_name_taken_by_nn_module_is_refused():
    with pytest.raises(HooktrainError, match=r"plugin name 'half' is an attribute of torch.nn.Module"):
        HookCallback([StepRecorder(name="half")])


def test_distinct_names_are_required():
    with pytest.raises(HooktrainError, match=r"plugin names must be distinct, got \['a', 'a'\]"):
        HookCallback([HookPlugin(name="a"), HookPlugin(name="a")])


@pytest.mark.parametrize("value", [0, -1, 1.5, "3"])
def test_every_n_steps_must_be_a_positive_integer(value):
    with pytest.raises(HooktrainError, match=rf"`plugins.p.every_n_steps` must be an integer >= 1, got {value!r}"):
        HookPlugin(name="p", every_n_steps=value)


def test_step_stats_average_repeated_calls_and_mark_missing_modules():
    stats = StepStats(num_modules=3)
    stats.add("x", 0, torch.tensor(1.0))
    stats.add("x", 0, torch.tensor(3.0))
    stats.add("x", 2, torch.tensor(5.0))
    means = stats.combined()["x"]
    assert means[0] == 2.0 and torch.isnan(means[1]) and means[2] == 5.0
    assert stats.recorded("x") == [True, False, True]


def test_unscale_divides_by_the_grad_scaler_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    scaler.scale(torch.ones(()))  # the scale tensor is created lazily, on first use
    info = StepInfo(step=0, scaler=scaler)
    ctx = HookContext("fc1", 0, StepStats(1), info)
    assert torch.equal(ctx.unscale(torch.full((2,), 1024.0)), torch.full((2,), 2.0))
    info.scaler = None
    assert torch.equal(ctx.unscale(torch.full((2,), 1024.0)), torch.full((2,), 1024.0))


def test_a_model_with_hooks_attached_can_be_copied_and_pickled():
    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    with HookSession(model, [StepRecorder(name="rec")]) as session:
        session.start_step(0)
        clone = pickle.loads(pickle.dumps(model))
        assert hook_count(clone) == hook_count(copy.deepcopy(model)) == hook_count(model) == 2


def test_an_exception_in_update_names_the_plugin():
    class BrokenUpdate(HookPlugin):
        def forward(self, ctx, module, args, output):
            ctx.record("x", output.mean())

        def update(self, state, stats):
            raise KeyError("missing")

    with pytest.raises(PluginHookError, match=r"plugin 'broken' failed at step 0 in its update: KeyError: 'missing'"):
        fit([BrokenUpdate(name="broken", targets=["head"])])


def test_an_exception_at_the_end_of_an_evaluation_phase_names_the_plugin_and_the_phase():
    class BrokenEnd(HookPlugin):
        def forward(self, ctx, module, args, output):
            ctx.record("x", output.mean())

        def end_phase(self, stats):
            raise KeyError("missing")

    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    with HookSession(model, [BrokenEnd(name="broken", targets=["head"], phases=["validate"])]) as session:
        with pytest.raises(PluginHookError, match=r"plugin 'broken' failed at the end of validate: KeyError: 'missing'"):
            with torch.no_grad(), session.evaluating("validate"):
                model(torch.randn(2, 4))


def test_gradients_ready_runs_once_per_active_step_after_the_per_module_calls_and_errors_name_the_plugin():
    class Ready(HookPlugin):
        calls = []

        def before_optimizer_step(self, ctx, module):
            self.calls.append((self.info.step, ctx.module_name, module.weight.grad is not None))

        def gradients_ready(self):
            self.calls.append((self.info.step, "ready"))
            if self.info.step == 4:
                raise KeyError("late")

    with pytest.raises(PluginHookError, match=r"plugin 'ready' failed at step 4 in its gradients_ready: KeyError: 'late'"):
        fit([Ready(name="ready", targets=["fc1", "head"], every_n_steps=2)], steps=5)
    assert Ready.calls == [call for step in (0, 2, 4) for call in ((step, "fc1", True), (step, "head", True), (step, "ready"))]


class SharedLayer(nn.Module):
    """One Linear called twice per forward, reachable as ``first`` and as ``again`` (the tutorials' FixedHiddenMLP)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.again = self.first
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.again(torch.relu(self.first(x))))


class EveryReduction(HookPlugin):
    """Records each call's largest |output| under every reduction, and a histogram; keeps what update got (test only)."""

    def forward(self, ctx, module, args, output):
        for reduce in ("mean", "sum", "max", "min"):
            ctx.record(reduce, output.detach().abs().max(), reduce=reduce)
        ctx.record_histogram("output", output)

    def update(self, state, stats):
        self.stats = stats
        return {}


def test_a_shared_module_is_handled_per_call_and_combined_as_each_statistic_says(tmp_path):
    torch.manual_seed(0)
    model, x = SharedLayer(), torch.randn(3, 4)
    plugin = EveryReduction(name="every", targets=["again"])  # the second name selects it too
    with HookSession(model, [plugin]) as session, session.step(0):
        model(x).sum().backward()
        histogram = session._stats["every"].histograms[("output", 0)]
    assert [ctx.module_name for _, ctx in session._contexts["every"]] == ["first"]  # listed once, under its first name
    first = model.first(x).detach()
    second = model.first(torch.relu(first)).detach()
    a, b = first.abs().max(), second.abs().max()
    torch.testing.assert_close(plugin.stats["mean"], ((a + b) / 2).reshape(1))
    torch.testing.assert_close(plugin.stats["sum"], (a + b).reshape(1))
    torch.testing.assert_close(plugin.stats["max"], torch.maximum(a, b).reshape(1))
    torch.testing.assert_close(plugin.stats["min"], torch.minimum(a, b).reshape(1))
    both = torch.cat([first.flatten(), second.flatten()])  # the histogram merges both calls
    torch.testing.assert_close(histogram[:5], torch.stack([both.min(), both.max(), torch.tensor(24.0), both.sum(), both.square().sum()]))
    assert histogram[5:].sum() == 24
    assert "first (also again)  x2  every: forward" in session.hook_map()


@pytest.mark.parametrize("shape", [(5000,), (64, 6, 28, 28), (7,)])
def test_a_histogram_summary_is_numpys_histogram_over_the_values_range(shape):
    import numpy as np

    from hooktrain.stats import histogram_summary

    torch.manual_seed(0)
    values = torch.randn(shape) * 2 + 1
    summary = histogram_summary(values)
    counts, _ = np.histogram(values.numpy(), bins=64, range=(values.min().item(), values.max().item()))
    assert summary[5:].tolist() == counts.tolist()  # the maximum in the last bucket, as NumPy counts it
    torch.testing.assert_close(summary[:5], torch.stack([values.min(), values.max(), torch.tensor(float(values.numel())),
                                                         values.sum(), values.square().sum()]))
    assert histogram_summary(torch.full((3, 3), 2.5))[5:].tolist() == [9.0] + [0.0] * 63  # all equal: one bucket


def test_values_far_outside_the_buckets_land_in_the_end_ones_and_nan_in_the_first():
    from hooktrain.stats import bucket_counts

    # Counted over int32 indices on the CPU: 3e9 buckets up would overflow one, inf and 1e30 overflow any int.
    values = torch.tensor([-1e12, float("-inf"), -0.5, 0.1, 0.6, 0.99, 1.0, 3e9, 1e30, float("inf"), float("nan")])
    assert bucket_counts(values, torch.tensor(0.0), torch.tensor(1.0), 4).tolist() == [5.0, 0.0, 1.0, 5.0]


def test_merged_histogram_buckets_stay_within_a_bucket_width_of_the_exact_one():
    from hooktrain.stats import histogram_summary, merge_histograms

    torch.manual_seed(0)
    a, b = torch.randn(5000), torch.randn(5000) * 3 + 2
    merged, exact = merge_histograms(histogram_summary(a), histogram_summary(b)), histogram_summary(torch.cat([a, b]))
    torch.testing.assert_close(merged[:5], exact[:5])
    assert merged[5:].sum() == 10000
    # Each value moves by at most one bucket, so the earth mover's distance (in buckets) is at most the count.
    moved = (merged[5:].cumsum(0) - exact[5:].cumsum(0)).abs().sum()
    assert moved <= 10000


def test_a_reduction_must_be_known_and_the_same_on_every_call():
    stats = StepStats(num_modules=1, plugin_name="p")
    with pytest.raises(HooktrainError, match=r"plugin 'p' recorded 'x' with reduce='median'; use one of \['mean', 'sum', 'max', 'min'\]"):
        stats.add("x", 0, torch.ones(()), reduce="median")
    stats.add("x", 0, torch.ones(()), reduce="sum")
    with pytest.raises(HooktrainError, match=r"recorded 'x' with reduce='max' after reduce='sum'"):
        stats.add("x", 0, torch.ones(()), reduce="max")


class PhaseRecorder(StepRecorder):
    """StepRecorder that also keeps the phases its hooks ran in and counts its updates (test only)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.phases_seen, self.updates = set(), 0

    def forward(self, ctx, module, args, output):
        self.phases_seen.add(ctx.phase)
        super().forward(ctx, module, args, output)

    def update(self, state, stats):
        self.updates += 1
        return {}


def fit_with_validation(plugins, tmp_path, num_sanity_val_steps=0):
    task = ClassifierTask(MLP(in_features=16, hidden_sizes=[8], num_classes=3), optimizer=partial(torch.optim.SGD, lr=0.1))
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=num_sanity_val_steps,
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="", version=""), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[HookCallback(plugins)],
    )
    trainer.fit(task, datamodule=SyntheticDataModule(num_samples=256, num_classes=3, image_size=4, batch_size=8))
    return read_events(tmp_path)


def test_observers_run_in_training_only_unless_given_other_phases(tmp_path):
    default = PhaseRecorder(name="default", targets=["head"])
    evaluating = PhaseRecorder(name="evaluating", targets=["head"], phases=["validate"])
    events = fit_with_validation([default, evaluating], tmp_path)
    assert default.phases == ("train",) and default.phases_seen == {"train"} and default.updates == 6
    assert evaluating.phases_seen == {"validate"} and evaluating.updates == 0  # evaluation leaves buffers alone
    assert [e.step for e in events.Scalars("watch/evaluating/validate/output_mean/head")] == [2, 5]  # once per validation, after steps 0-2 and 3-5
    assert "watch/default/output_mean/head" in events.Tags()["scalars"]
    assert not any(tag.startswith("watch/default/validate") for tag in events.Tags()["scalars"])


def test_phases_must_be_known():
    with pytest.raises(HooktrainError, match=r"`plugins.p.phases` must be a non-empty list of \['train', 'validate', 'test', 'predict', 'analyze'\], got \['eval'\]"):
        HookPlugin(name="p", phases=["eval"])


class PlainTask(pl.LightningModule):
    """A LightningModule that is not ClassifierTask and has no ``model`` attribute: the session hooks the module itself."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_any_lightning_module_keeps_plugin_state_across_a_resume_with_other_plugins(tmp_path):
    from plugins.grad_logger import GradLogger
    from plugins.nan_guard import NanGuard
    from plugins.weight_stats import WeightStats

    data = SyntheticDataModule(num_samples=256, num_classes=3, image_size=4, batch_size=8)

    def fit_plain(plugins, steps, ckpt_path=None):
        task = PlainTask()
        trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, callbacks=[HookCallback(plugins)])
        trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
        trainer.save_checkpoint(tmp_path / "last.ckpt")
        return task

    first = fit_plain([GradLogger(name="grad_logger", every_n_steps=1), WeightStats(name="weight_stats")], steps=3)
    states = [name for name, _ in first.named_modules() if name.startswith("plugin_state.") and name.count(".") == 1]
    assert states == ["plugin_state.grad_logger", "plugin_state.weight_stats"]
    resumed = fit_plain([GradLogger(name="grad_logger", every_n_steps=1), NanGuard(name="nan_guard")], steps=5, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.plugin_state.grad_logger.updates.item() == 5  # 3 restored + 2 new
    assert resumed.plugin_state.nan_guard.checked_steps.item() == 2  # new in this run: fresh, then counting
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert not any(key.startswith("plugin_state.weight_stats") for key in saved)  # dropped with a warning


def test_a_plain_loop_writes_csv_rows_and_an_evaluation_phase(tmp_path):
    import csv

    torch.manual_seed(0)
    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    plugin = StepRecorder(name="rec", every_n_steps=2, targets=["head"], phases=["train", "test"])
    x = torch.randn(4, 1, 4, 4)
    with HookSession(model, [plugin], writers=[CSVWriter(tmp_path / "stats.csv")]) as session:
        for step in range(3):
            with session.step(step):
                model(x).sum().backward()
        with session.evaluating("test"), torch.no_grad():
            expected_test = torch.stack([model(x).mean(), model(x * 2).mean()]).mean()
    rows = list(csv.DictReader((tmp_path / "stats.csv").open()))
    tags = [(row["step"], row["tag"]) for row in rows]
    assert ("0", "watch/rec/output_mean/head") in tags and ("2", "watch/rec/output_mean/head") in tags and ("1", "watch/rec/output_mean/head") not in tags
    test_row = next(row for row in rows if row["tag"] == "watch/rec/test/output_mean/head")
    assert test_row["step"] == "2" and float(test_row["value"]) == pytest.approx(expected_test.item(), rel=1e-6)
    assert plugin.calls[-2:] == [(2, "head"), (2, "head")]  # the test batches ran the hook, at the last step trained


def test_the_core_imports_no_lightning():
    """session, plugin, stats, select and writers import no Lightning at module level: the session runs in any loop."""
    import ast
    from pathlib import Path

    import hooktrain

    package = Path(hooktrain.__file__).parent
    for name in ("session.py", "plugin.py", "stats.py", "select.py", "writers.py"):
        tree = ast.parse((package / name).read_text())
        imported = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
        assert not [module for module in imported if module.split(".")[0] in ("lightning", "pytorch_lightning")], name


def test_absmax_is_the_largest_magnitude_and_carries_nan_and_inf():
    values = torch.tensor([[0.5, -3.0], [2.0, 1.0]])
    assert absmax(values).item() == 3.0  # the largest magnitude is a negative value
    assert absmax(torch.tensor([1.0, float("-inf")])).item() == float("inf")
    assert torch.isnan(absmax(torch.tensor([1.0, float("nan"), -5.0])))


class RecordingWriter(Writer):
    """Keeps what the session writes, to compare with what the plugin produced."""

    def __init__(self):
        self.scalars, self.images, self.histograms = {}, {}, {}
        self.scalars_at: dict[int, dict[str, float]] = {}
        self.image_steps: list[tuple[str, int]] = []

    def write_scalars(self, scalars, step):
        self.scalars.update(scalars)
        self.scalars_at.setdefault(step, {}).update(scalars)

    def write_histogram(self, tag, summary, step):
        self.histograms[tag] = summary

    def write_image(self, tag, image, step):
        self.images[tag] = image.clone()
        self.image_steps.append((tag, step))


class Pictures(HookPlugin):
    """A scalar and a histogram per module from its hook, a picture per module from update."""

    def forward(self, ctx, module, args, output):
        ctx.record("level", torch.tensor(ctx.index + 0.5))
        ctx.record_histogram("values", torch.arange(4.0) + ctx.index)

    def update(self, state, stats):
        return {"picture": torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3) / 12, "total": stats["level"].sum()}


def test_scalars_histograms_and_pictures_reach_the_writer_each_in_its_place():
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)  # fc1, head
    writer = RecordingWriter()
    with HookSession(model, [Pictures(name="p", targets=["fc1", "head"])], writers=[writer]) as session, session.step(0):
        model(torch.randn(5, 4)).sum().backward()
    assert writer.scalars["watch/p/level/fc1"] == 0.5 and writer.scalars["watch/p/level/head"] == 1.5 and writer.scalars["watch/p/total"] == 2.0
    expected = torch.arange(12, dtype=torch.float32).view(2, 2, 3) / 12
    assert torch.equal(writer.images["watch/p/picture/fc1"], expected[0]) and torch.equal(writer.images["watch/p/picture/head"], expected[1])
    assert writer.histograms["watch/p/values/head"][:5] == [1.0, 4.0, 4.0, 10.0, 30.0]  # min, max, count, sum, sum of squares


class Levels(HookPlugin):
    """A per-module statistic that spans decades, drawn as a layer picture; and a statistic of its own bookkeeping."""

    layer_pictures = ("level",)

    def forward(self, ctx, module, args, output):
        ctx.record("level", torch.tensor(10.0**ctx.index * (ctx.step + 1)))
        ctx.record("_bookkeeping", output.mean())


class FakeClock:
    """The session's drawing clock, moved by hand: ``seconds_per_step`` a step, ``draw_seconds`` a drawing."""

    def __init__(self, seconds_per_step: float, draw_seconds: float = 0.0) -> None:
        self.now, self.seconds_per_step, self.draw_seconds = 0.0, seconds_per_step, draw_seconds

    def __call__(self) -> float:
        return self.now


class SlowLevels(Levels):
    def draw(self, state):
        self.clock.now += self.clock.draw_seconds
        return {}


def run_levels(monkeypatch, total_steps, clock):
    monkeypatch.setattr(session_module, "_clock", clock)
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)  # fc1, head
    writer = RecordingWriter()
    plugin = SlowLevels(name="lv", targets=["fc1", "head"], every_n_steps=2)
    plugin.clock = clock
    session = HookSession(model, [plugin], writers=[writer]).setup()
    session.info.total_steps = total_steps
    for step in range(8):
        with session.step(step):
            model(torch.randn(2, 4)).sum().backward()
        clock.now += clock.seconds_per_step
        session.draw()  # as an engine does at each epoch's end
    session.close()
    return session, writer


def test_layer_pictures_keep_every_logged_step_in_buffers_and_are_drawn_a_few_times_a_fit(monkeypatch):
    session, writer = run_levels(monkeypatch, total_steps=8, clock=FakeClock(seconds_per_step=61))  # a quarter of the fit: 2 steps
    history = session.state.lv.by_layer
    assert history.steps[-4:].tolist() == [0, 2, 4, 6] and (history.steps[:-4] == -1).all()
    torch.testing.assert_close(history.level[:, -4:], torch.tensor([[1.0, 3, 5, 7], [10, 30, 50, 70]]))
    assert writer.image_steps == [("watch/lv/by_layer/level", 2), ("watch/lv/by_layer/level", 4), ("watch/lv/by_layer/level", 6)]
    image = writer.images["watch/lv/by_layer/level"]
    assert image.dim() == 3 and image.shape[0] == 3 and image.std() > 0.1  # a real picture, not a blank
    assert "watch/lv/level/fc1" in writer.scalars and not any("_bookkeeping" in tag for tag in writer.scalars)
    _, long_fit = run_levels(monkeypatch, total_steps=1000, clock=FakeClock(seconds_per_step=61))
    assert long_fit.image_steps == [("watch/lv/by_layer/level", 6)]  # none due during the fit: the last picture at close


class TagsOnly(Writer):
    """Shows images (so the session draws) and keeps only their tags, as a writer to a file does."""

    def __init__(self):
        self.tags = []

    def write_image(self, tag, image, step):
        self.tags.append(tag)


class LevelsAndALine(Levels):
    def draw(self, state):
        from matplotlib.figure import Figure

        figure = Figure(figsize=(3, 2))
        figure.add_subplot().plot([0, 1], [1, 0])
        return {"line": figure}


def test_a_drawing_writes_each_image_before_drawing_the_next_so_one_is_in_memory(monkeypatch):
    """13-30 images of 3 MB each at the fit's end: held together they lifted a run's peak memory by tens of MB."""
    drawn, alive_at_each_drawing = [], []

    def to_image(figure):
        alive_at_each_drawing.append(sum(image() is not None for image in drawn))
        image = session_module.figures_to_image(figure)
        drawn.append(weakref.ref(image))
        return image

    monkeypatch.setattr(session_module, "figures_to_image", session_module.to_image, raising=False)
    monkeypatch.setattr(session_module, "to_image", to_image)
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    writer = TagsOnly()
    with HookSession(model, [LevelsAndALine(name="lv", targets=["fc1", "head"])], writers=[writer]) as session, session.step(0):
        model(torch.randn(2, 4)).sum().backward()
    assert writer.tags == ["watch/lv/line", "watch/lv/by_layer/level"]
    assert alive_at_each_drawing == [0, 0]


def test_drawing_waits_a_minute_and_fifty_times_its_own_time_so_it_stays_a_small_share_of_a_fit(monkeypatch):
    _, quick = run_levels(monkeypatch, total_steps=8, clock=FakeClock(seconds_per_step=1))
    assert quick.image_steps == [("watch/lv/by_layer/level", 6)]  # a fit of 8 seconds: one drawing, at its end
    _, slow_drawing = run_levels(monkeypatch, total_steps=8, clock=FakeClock(seconds_per_step=61, draw_seconds=5))
    assert slow_drawing.image_steps == [("watch/lv/by_layer/level", 2), ("watch/lv/by_layer/level", 6)]  # the next waits 250 s


class Sleeper(HookPlugin):
    """Spends a known host time in its hook on every step."""

    def forward(self, ctx, module, args, output):
        time.sleep(0.004)


def test_overhead_is_the_plugins_share_of_the_step_time_since_its_last_logging_step():
    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    writer = RecordingWriter()
    with HookSession(model, [Sleeper(name="slow", targets=["head"], log_every_n_steps=3)], writers=[writer]) as session:
        for step in range(7):
            with session.step(step):
                model(torch.randn(2, 4)).sum().backward()
            time.sleep(0.004)  # outside the step (data loading, validation): not step time
    shares = {step: values.get("watch/overhead_share/slow") for step, values in writer.scalars_at.items()}
    assert list(shares) == [0, 3, 6] and shares[0] is None  # no interval before the first logging step
    assert 0.6 < shares[3] <= 1.0 and 0.6 < shares[6] <= 1.0  # 4 ms in a step of little more


def test_an_evaluation_phase_writes_its_histograms_whatever_the_last_training_step():
    class Histograms(HookPlugin):
        def forward(self, ctx, module, args, output):
            if self.writes_now(ctx):  # logging steps in training; every batch of an evaluation phase
                ctx.record_histogram("output", output)

    class Captured(Writer):
        tags = []

        def write_histogram(self, tag, summary, step):
            self.tags.append((tag, step, summary[2]))

    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    plugin = Histograms(name="hist", targets=["head"], phases=["train", "validate"], log_every_n_steps=10)
    with HookSession(model, [plugin], writers=[Captured()]) as session:
        with session.step(1):  # not a logging step
            model(torch.randn(5, 4)).sum().backward()
        with torch.no_grad(), session.evaluating("validate"):
            model(torch.randn(5, 4))
            model(torch.randn(5, 4))
    assert Captured.tags == [("watch/hist/validate/output/head", 1, 20.0)]  # both batches: 2 x 5 x 2 values


class Counting(HookPlugin):
    """Counts its forward calls in a step's statistics, and keeps what its update received (test only)."""

    def forward(self, ctx, module, args, output):
        ctx.record("calls", torch.ones(()), reduce="sum")

    def update(self, state, stats):
        self.received = stats["calls"].tolist()
        return {}


def test_the_micro_batches_of_one_optimizer_step_reach_update_together():
    """Under gradient accumulation an engine starts the same step once per micro-batch."""
    model, plugin = MLP(in_features=4, hidden_sizes=[3], num_classes=2), Counting(name="c", targets=["head"])
    with HookSession(model, [plugin]) as session:
        for _ in range(3):
            session.start_step(0)
            model(torch.randn(2, 4)).sum().backward()
        session.finish_step()
    assert plugin.received == [3.0]


def test_after_an_evaluation_phase_its_plugins_leave_the_model_alone():
    model, plugin = MLP(in_features=4, hidden_sizes=[3], num_classes=2), StepRecorder(name="v", targets=["head"], phases=["validate"])
    with HookSession(model, [plugin]) as session:
        with session.evaluating("validate"):
            model(torch.randn(2, 4))
        model(torch.randn(2, 4))  # outside any step or phase
        assert len(plugin.calls) == 1 and hook_count(model) == 0
        with pytest.raises(HooktrainError, match=r"phase must be one of \['validate', 'test', 'predict', 'analyze'\], got 'eval'"):
            session.start_phase("eval")


def test_a_session_whose_writers_show_no_image_draws_nothing(tmp_path):
    class DrawingFails(Levels):
        def draw(self, state):
            raise AssertionError("drawn for writers that show no image")

    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    with HookSession(model, [DrawingFails(name="d")], writers=[CSVWriter(tmp_path / "stats.csv")]) as session, session.step(0):  # closing draws
        model(torch.randn(2, 4))
    assert "watch/d/level/head" in (tmp_path / "stats.csv").read_text()  # the step was written


def test_an_evaluation_phase_leaves_the_layer_pictures_history_alone():
    model, plugin = MLP(in_features=4, hidden_sizes=[3], num_classes=2), Levels(name="l", phases=["train", "validate"])
    with HookSession(model, [plugin], writers=[RecordingWriter()]) as session:
        with session.step(0):
            model(torch.randn(2, 4))
        history = {key: value.clone() for key, value in session.state["l"].state_dict().items()}
        with session.evaluating("validate"):
            model(torch.randn(2, 4))
        for key, value in session.state["l"].state_dict().items():
            assert identical(value, history[key]), key


def test_only_plugins_that_change_the_tested_forward_are_named_as_missing_from_model_pt():
    class Steering(HookPlugin):
        changes_forward = True

    model = MLP(in_features=4, hidden_sizes=[3], num_classes=2)
    plugins = [Steering(name="in_training", phases=["train"]), Steering(name="in_the_test"), Counting(name="observer")]  # steering: every phase by default
    with HookSession(model, plugins) as session:
        weights, not_in_weights = session.export_state_dict()
    assert not_in_weights == ["in_the_test"] and weights.keys() == model.state_dict().keys()


def test_the_sanity_check_writes_no_evaluation_statistics(tmp_path):
    evaluating = PhaseRecorder(name="evaluating", targets=["head"], phases=["validate"])
    events = fit_with_validation([evaluating], tmp_path, num_sanity_val_steps=2)
    assert {step for step, _ in evaluating.calls} == {0, 2, 5}  # it ran in the sanity check too
    assert [e.step for e in events.Scalars("watch/evaluating/validate/output_mean/head")] == [2, 5]


class FailsAtStep(HookPlugin):
    def __init__(self, failing_step, **kwargs):
        super().__init__(**kwargs)
        self.failing_step = failing_step

    def update(self, state, stats):
        if self.info.step == self.failing_step:
            raise RuntimeError("broken on purpose")
        return {}


@pytest.mark.parametrize("failing_step", [None, 4])
def test_the_trainer_draws_pictures_at_epoch_ends_and_none_after_a_failure(monkeypatch, tmp_path, failing_step):
    readings = iter(range(0, 10**6, 100))  # the drawing clock: each reading 100 s after the last, so time never holds a drawing back
    monkeypatch.setattr(session_module, "_clock", lambda: next(readings))
    plugins = [Levels(name="lv", targets=["fc1", "head"], log_every_n_steps=1), FailsAtStep(failing_step, name="failing")]
    if failing_step is None:
        events = fit_with_validation(plugins, tmp_path)
    else:
        with pytest.raises(PluginHookError, match="broken on purpose"):
            fit_with_validation(plugins, tmp_path)
        events = read_events(tmp_path)
    drawn = [image.step for image in events.Images("watch/lv/by_layer/level")]
    assert drawn == ([2, 5] if failing_step is None else [2])  # the epochs' ends (steps 0-2, 3-5); after a failure, no last one
