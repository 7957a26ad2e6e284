"""Epoch loss and accuracy folded in batches equal the per-step sums they replace."""

import torch
import torch.nn.functional as F

from hooktrain.metrics import EpochAccuracy


def test_folded_sums_equal_per_batch_sums_and_hold_at_most_fold_every_batches():
    generator = torch.Generator().manual_seed(0)
    epoch = EpochAccuracy(fold_every=3)  # folds after batches 3 and 6 (two batch sizes), the rest at the end
    loss_sum, correct, count = 0.0, 0, 0
    for size in [64] * 5 + [17] + [64]:
        logits, targets = torch.randn(size, 10, generator=generator), torch.randint(0, 10, (size,), generator=generator)
        loss = F.cross_entropy(logits, targets)
        epoch.add(loss, logits, targets)
        assert len(epoch._pending) < 3  # memory: at most fold_every batches of logits wait
        loss_sum, correct, count = loss_sum + loss.item() * size, correct + (logits.argmax(1) == targets).sum().item(), count + size
    totals = epoch.totals()
    assert epoch.count == count == 401
    assert torch.allclose(totals, torch.tensor([loss_sum, float(correct)]))
    assert not epoch._pending  # nothing left unfolded
