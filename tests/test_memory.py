"""No plugin keeps a tensor that holds an autograd graph, during or after training."""

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from hooktrain import PluginRunner
from hooktrain.run import build_run
from test_train import ALL_PLUGINS


def graph_tensors(obj, seen=None) -> list[str]:
    """Paths to tensors with a grad_fn reachable from plain containers and objects (not from nn.Modules)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, nn.Module):
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return ["tensor"] if obj.grad_fn is not None else []
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else vars(obj).items() if hasattr(obj, "__dict__") else []
    return [f"{key}.{path}" for key, child in children for path in graph_tensors(child, seen)]


class GraphCheck(Callback):
    def __init__(self, runner):
        self.runner, self.found = runner, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.found += graph_tensors({"plugins": self.runner.plugins, "stats": self.runner._stats})


def test_no_plugin_keeps_a_graph(make_cfg):
    cadence = [f"plugins.{name}.every_n_steps=1" for name in ALL_PLUGINS]
    run = build_run(make_cfg("model=lenet", f"plugins=[{','.join(ALL_PLUGINS)}]", *cadence))
    runner = next(callback for callback in run.trainer.callbacks if isinstance(callback, PluginRunner))
    check = GraphCheck(runner)
    run.trainer.callbacks.append(check)  # after the runner: sees what plugins keep between steps
    run.trainer.fit(run.task, datamodule=run.datamodule)
    assert check.found == []
    assert graph_tensors({"plugins": runner.plugins, "stats": runner._stats}) == []
    assert all(buffer.grad_fn is None for buffer in run.task.plugin_state.buffers())
