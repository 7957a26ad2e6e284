"""grad_logger's numbers against a hand computation with torch.autograd."""

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from hooktrain.models import MLP
from plugins.grad_logger import GradLogger
from test_session import fit


class KeepBatches(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)


def test_gradient_norms_match_autograd_on_the_first_step():
    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    reference = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    reference.load_state_dict(model.state_dict())
    keep = KeepBatches()
    plugin = GradLogger(name="grad_logger", ema_decay=0.5, histograms=False, targets=["fc1", "head"])
    task, _ = fit([plugin], steps=1, model=model, callbacks=[keep])

    x, y = keep.batches[0]
    fc1_out = reference.fc1(reference.flatten(x))  # (B, 8)
    logits = reference.head(reference.act1(fc1_out))  # (B, 3)
    fc1_out.retain_grad(), logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    expected_output = torch.stack([fc1_out.grad.norm(), logits.grad.norm()])
    expected_params = torch.stack([
        torch.cat([layer.weight.grad.flatten(), layer.bias.grad]).norm() for layer in (reference.fc1, reference.head)
    ])

    state = task.plugin_state.grad_logger
    assert state.updates.item() == 1
    torch.testing.assert_close(state.ema_grad_norm, expected_output)  # the first value is taken as it is
    torch.testing.assert_close(state.ema_param_grad_norm, expected_params)


def test_ema_update_is_in_place_and_skips_missing_values():
    plugin = GradLogger(name="g", ema_decay=0.75)
    state = nn.Module()
    plugin.setup(state, {"a": nn.Linear(1, 1), "b": nn.Linear(1, 1)})
    ema = state.ema_grad_norm
    plugin.update(state, {"grad_norm": torch.tensor([4.0, 8.0])})
    plugin.update(state, {"grad_norm": torch.tensor([8.0, float("nan")]), "param_grad_norm": torch.tensor([1.0, 2.0])})
    assert state.ema_grad_norm is ema  # updated in place: DDP broadcasts buffers by reference
    torch.testing.assert_close(state.ema_grad_norm, torch.tensor([0.75 * 4 + 0.25 * 8, 8.0]))
    torch.testing.assert_close(state.ema_param_grad_norm, torch.tensor([1.0, 2.0]))  # first value of each module
    assert state.updates.item() == 2
