"""No plugin keeps a tensor that holds an autograd graph, during or after training."""

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from hooktrain.run import build_run
from conftest import every_plugin


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
    def __init__(self, hooks):
        self.hooks, self.found = hooks, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.found += graph_tensors({"plugins": self.hooks.plugins, "stats": self.hooks.session._stats})


def test_no_plugin_keeps_a_graph(make_cfg):
    run = build_run(make_cfg("model=lenet", *every_plugin()))
    check = GraphCheck(run.hooks)
    run.trainer.callbacks.append(check)  # after the session's callback: sees what plugins keep between steps
    run.trainer.fit(run.task, datamodule=run.datamodule)
    assert check.found == []
    assert graph_tensors({"plugins": run.hooks.plugins, "stats": run.hooks.session._stats}) == []
    assert all(buffer.grad_fn is None for buffer in run.task.plugin_state.buffers())
