import pytest
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler, TensorDataset

from hooktrain import train
from hooktrain.data import DigitsDataModule, SyntheticDataModule
from hooktrain.data.tensors import BatchIndexedTensors, EpochShuffle, WholeBatches
from hooktrain.errors import HooktrainError
from hooktrain.task import ClassifierTask


def _indices_of(data, split):
    """Identifies samples by their pixel values (digits images are nearly all distinct)."""
    return {tuple(image.flatten().tolist()) for image, _ in data.splits[split]}


def test_digits_split_is_complete_disjoint_and_follows_the_seed():
    data = DigitsDataModule(image_size=8, seed=0)
    data.setup()
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 1257, "val": 270, "test": 270}
    assert not _indices_of(data, "train") & _indices_of(data, "test")

    same, other = DigitsDataModule(image_size=8, seed=0), DigitsDataModule(image_size=8, seed=1)
    same.setup(), other.setup()
    assert torch.equal(same.splits["test"].tensors[1], data.splits["test"].tensors[1])
    assert not torch.equal(other.splits["test"].tensors[1], data.splits["test"].tensors[1])


def test_digits_are_resized_and_standardized_on_the_training_split():
    data = DigitsDataModule(image_size=32, batch_size=16)
    data.setup()
    images, labels = data.splits["train"].tensors
    assert images.shape == (1257, 1, 32, 32) and labels.dtype == torch.long
    assert set(labels.tolist()) == set(range(10))
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-3
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and y.shape == (16,)


def test_synthetic_data_has_the_requested_shape():
    data = SyntheticDataModule(num_samples=100, num_classes=3, channels=2, image_size=5)
    data.setup()
    images, labels = data.splits["train"].tensors
    assert images.shape[1:] == (2, 5, 5) and labels.max() < 3
    assert sum(len(split) for split in data.splits.values()) == 100


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": 0}, r"`data.batch_size` must be an integer >= 1, got 0"),
        ({"val_fraction": -0.1}, r"`data.val_fraction` must be a number in \[0.0, 1.0\), got -0.1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"must leave samples to train on"),
    ],
)
def test_bad_data_values_are_named(kwargs, message):
    with pytest.raises(HooktrainError, match=message):
        DigitsDataModule(**kwargs)


def _per_sample_batches(loader):
    """What PyTorch's default path yields for the same sampler: one ``__getitem__`` per sample, then a collate."""
    dataset = TensorDataset(*loader.dataset.tensors)
    return list(DataLoader(dataset, batch_size=loader.batch_sampler.batch_size, sampler=loader.batch_sampler.sampler))


def test_a_batch_is_one_index_into_the_tensors_and_equals_per_sample_loading(monkeypatch):
    data = DigitsDataModule(batch_size=64)
    data.setup()
    loader = data.train_dataloader()
    expected = _per_sample_batches(loader)
    monkeypatch.setattr(BatchIndexedTensors, "__getitem__", lambda *_: pytest.fail("indexed one sample at a time"))
    loader.batch_sampler.sampler.set_epoch(0)  # the same order again
    batches = list(loader)
    assert len(batches) == len(expected) == 20 and batches[-1][0].shape[0] == 1257 - 19 * 64
    for (x, y), (x_expected, y_expected) in zip(batches, expected):
        assert torch.equal(x, x_expected) and torch.equal(y, y_expected)


def test_a_distributed_sampler_swapped_in_keeps_whole_batch_indexing(monkeypatch):
    """Lightning and Fabric rebuild the loader around a DistributedSampler under DDP: each rank gets its shard, batched."""
    from lightning.fabric.utilities.data import _update_dataloader

    data = DigitsDataModule(batch_size=64)
    data.setup()
    monkeypatch.setattr(BatchIndexedTensors, "__getitem__", lambda *_: pytest.fail("indexed one sample at a time"))
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(data.splits["train"], num_replicas=2, rank=rank, shuffle=True, seed=0)
        shards.append(torch.cat([y for _, y in _update_dataloader(data.train_dataloader(), sampler)]))
    assert len(shards[0]) == len(shards[1]) == 629  # 1257 samples, one padded
    assert torch.cat(shards).bincount().sum() == 1258


@pytest.mark.parametrize("drop_last", [False, True])
def test_whole_batches_are_the_batches_of_torchs_batch_sampler(drop_last):
    """Lightning and Fabric rebuild a BatchSampler with its own ``drop_last``: it must mean what it means in torch."""
    sampler = SequentialSampler(range(10))
    assert [batch.tolist() for batch in WholeBatches(sampler, 4, drop_last)] == list(BatchSampler(sampler, 4, drop_last))


def test_each_epoch_draws_its_own_order_and_a_resumed_epoch_draws_it_again():
    data = TensorDataset(torch.arange(100))
    sampler = EpochShuffle(data, seed=3)
    orders = []
    for epoch in (0, 1, 1):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    resumed = EpochShuffle(data, seed=3)  # a new process, resuming at epoch 1
    resumed.set_epoch(1)
    assert orders[0] != orders[1] == orders[2] == list(resumed)


@pytest.fixture
def trained_targets(monkeypatch) -> list[Tensor]:
    """The targets of every training batch, in the order a fit trains on them (both engines call ``ClassifierTask.loss``)."""
    seen: list[Tensor] = []
    loss = ClassifierTask.loss

    def recording_loss(task, logits, targets):
        if task.training:
            seen.append(targets.clone())
        return loss(task, logits, targets)

    monkeypatch.setattr(ClassifierTask, "loss", recording_loss)
    return seen


@pytest.mark.parametrize("engine", ["trainer=cpu", "trainer=fabric"])
def test_each_epoch_trains_on_a_new_order_of_the_batches(make_cfg, trained_targets, engine):
    train(make_cfg(engine, "model=mlp", "trainer.max_epochs=2"))
    assert len(trained_targets) == 8  # 4 batches an epoch
    assert not torch.equal(torch.cat(trained_targets[:4]), torch.cat(trained_targets[4:]))


def test_overfit_batches_trains_on_the_same_batches_every_epoch(make_cfg, trained_targets):
    train(make_cfg("model=mlp", "trainer.overfit_batches=2", "trainer.max_epochs=2"))
    assert len(trained_targets) == 4
    assert torch.equal(torch.cat(trained_targets[:2]), torch.cat(trained_targets[2:]))
