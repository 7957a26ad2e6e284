"""torch.compile: hooks in place before compiling and gated per step fire as in eager, without recompiling each step."""

from collections import Counter

import pytest
import torch
from torch._dynamo.utils import counters

from lightning.pytorch.callbacks import Callback

from conftest import run_cli
from hooktrain import HookPlugin, HooktrainError, train
from hooktrain.run import build_run
from test_train import LENET_LAYERS

COUNTER = ["+plugins.counter._target_=test_compile.CallCounter", "+plugins.counter.every_n_steps=2", "+plugins.counter.targets=[features.*,classifier.*]"]


class CallCounter(HookPlugin):
    """Counts, per module, forward calls and output-gradient calls over its active steps, in buffers;
    and on the host, the calls in each step (test only: runs eagerly, outside the compiled graph)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.per_step = Counter()

    def setup(self, state, modules):
        state.register_buffer("forward_calls", torch.zeros(len(modules)))
        state.register_buffer("grad_calls", torch.zeros(len(modules)))
        state.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, ctx, module, args, output):
        self.per_step[(ctx.phase, ctx.step)] += 1
        ctx.record("forward_calls", torch.ones(()), reduce="sum")

    def output_grad(self, ctx, module, grad):
        ctx.record("grad_calls", torch.ones(()), reduce="sum")

    def update(self, state, stats):
        state.forward_calls.add_(stats["forward_calls"].nan_to_num(0.0))
        state.grad_calls.add_(stats["grad_calls"].nan_to_num(0.0))
        state.steps.add_(1)
        return {}


class GraphCount(Callback):
    """How many graphs torch.compile has made by the end of each training epoch."""

    def __init__(self):
        self.per_epoch = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.per_epoch.append(counters["stats"]["unique_graphs"])


def counted(make_cfg, *extra):
    run = build_run(make_cfg("model=lenet", "trainer.max_epochs=3", *COUNTER, *extra))
    graphs = GraphCount()
    run.trainer.callbacks.append(graphs)
    run.trainer.fit(run.task, datamodule=run.datamodule)
    return run, graphs.per_epoch


@pytest.mark.slow
def test_a_compiled_lenet_calls_every_hook_as_eager_does_and_stops_compiling_after_the_first_epoch(make_cfg):
    eager, _ = counted(make_cfg)
    torch._dynamo.reset()
    counters.clear()
    compiled, graphs = counted(make_cfg, "compile=aot_eager")  # dynamo's graph capture; inductor: test_cli_trains_compiled
    eager_state, compiled_state = eager.task.plugin_state.counter, compiled.task.plugin_state.counter
    assert eager_state.steps.item() == compiled_state.steps.item() == 6  # steps 0, 2, ..., 10 of 12
    assert len(eager_state.forward_calls) == 12  # every module under features and classifier: convs, activations, pools, linears
    assert (eager_state.forward_calls == 6).all() and (eager_state.grad_calls == 6).all()  # once per active step each
    assert torch.equal(compiled_state.forward_calls, eager_state.forward_calls)
    assert torch.equal(compiled_state.grad_calls, eager_state.grad_calls)
    plugin = next(p for p in compiled.hooks.plugins if p.name == "counter")
    assert plugin.per_step == next(p for p in eager.hooks.plugins if p.name == "counter").per_step
    assert set(plugin.per_step) == {("train", step) for step in range(0, 12, 2)}  # nothing on idle steps, nothing in validation
    # epoch 1 meets every variant (active and idle steps, validation); epochs 2 and 3 compile nothing new
    assert graphs[0] > 0 and graphs == [graphs[0]] * 3, graphs
    weights, _ = compiled.hooks.session.export_state_dict()
    assert not any("_orig_mod" in key for key in weights) and f"{LENET_LAYERS[0]}.weight" in weights
    assert compiled.hooks.session.hook_map().splitlines()[0].strip().startswith("features.conv1")


@pytest.mark.slow
def test_cli_trains_compiled_with_inductor(tmp_path):
    result = run_cli("train.py", "compile=true", "plugins=[grad_logger]", "plugins.grad_logger.every_n_steps=2", "trainer.max_epochs=1",
                     "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["plugin_state.grad_logger.updates"].item() == 2  # steps 0 and 2
    assert not any("_orig_mod" in key for key in torch.load(tmp_path / "model.pt", weights_only=True))


def test_a_plugin_with_full_backward_hooks_is_refused_under_compile(make_cfg):
    with pytest.raises(HooktrainError, match=r"plugin 'module_timer' uses full backward hooks \(backward_pre, backward\), with which torch.compile runs the whole model uncompiled"):
        train(make_cfg("plugins=[module_timer]", "compile=true"))


def test_compile_takes_a_backend_name_only(make_cfg):
    with pytest.raises(HooktrainError, match=r"`compile` must be true, false or a torch.compile backend \(.*inductor.*\), got 'fast'"):
        train(make_cfg("compile=fast"))


def test_a_compiled_run_keeps_steering_in_the_final_test(make_cfg):
    ablate = ["plugins=[ablate]", "plugins.ablate.targets=[classifier.fc2]", "plugins.ablate.phases=[test]", "compile=aot_eager"]
    torch._dynamo.reset()
    metrics = train(make_cfg(*ablate, "trainer.limit_test_batches=null"))
    assert metrics["test/acc"] < 0.15  # fc2 silenced in the test that follows the fit's teardown: one class for every image


def test_output_grad_registration_runs_eagerly_only_under_compile():
    from torch import nn

    from hooktrain import HookSession
    from plugins.grad_logger import GradLogger

    for compiled in (False, True):
        model = nn.Sequential(nn.Linear(2, 2))
        session = HookSession(model, [GradLogger(name="g")], compiled=compiled).setup()
        session.attach(session.plugins[0])
        (hook,) = model[0]._forward_hooks.values()
        assert (hook._run != hook._register) is compiled  # torch.compiler.disable wraps it under compile only
        session.close()
