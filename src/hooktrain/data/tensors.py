"""TensorDataModule: in-memory images and labels, split by seed, normalized with training statistics."""

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from hooktrain.errors import HooktrainError, check_in_range, check_positive_int


class EpochShuffle(RandomSampler):
    """Shuffles with a permutation drawn from ``(seed, epoch)``, so epoch N has the same order in a resumed run.

    Lightning calls ``set_epoch`` before each epoch; under DDP it replaces this sampler (a
    RandomSampler) with its DistributedSampler, which is seeded per epoch the same way.
    """

    def __init__(self, data_source: TensorDataset, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class BatchIndexedTensors(TensorDataset):
    """A TensorDataset that the DataLoader indexes a whole batch at a time.

    PyTorch's fetcher hands ``__getitems__`` the batch's indices at once, so a batch is one tensor
    index per tensor instead of ``batch_size`` ``__getitem__`` calls and a collate: 6% (LeNet) to
    22% (MLP) of a small model's step on the CPU.
    """

    def __getitems__(self, indices: Tensor | list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(tensor[index] for tensor in self.tensors)


class WholeBatches(BatchSampler):
    """Index batches cut from the sampler's whole epoch at once, as tensors, instead of gathered one index at a time.

    The sampler still draws the order (EpochShuffle, or under DDP the DistributedSampler that Lightning
    and Fabric build this class around, as they do any BatchSampler), so shuffling, exact resume and
    sharding are unchanged; what goes is a Python generator step per sample.
    """

    def __iter__(self):
        batches = torch.as_tensor(list(self.sampler), dtype=torch.long).split(self.batch_size)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        yield from batches


def batch_as_is(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The collate of :class:`BatchIndexedTensors`: its ``__getitems__`` already returns the batch."""
    return batch


class TensorDataModule(pl.LightningDataModule):
    """Base of data modules whose whole data set fits in memory; subclasses implement :meth:`load`.

    The split is a permutation drawn from ``seed`` alone, so it is the same in every run and on
    every rank. Images are standardized with the mean and std of the training split.

    Args:
        batch_size: samples per training batch.
        val_fraction: share of samples held out for validation.
        test_fraction: share of samples held out for the final test.
        seed: seed of the split.
        num_workers: DataLoader worker processes (0 suits in-memory data).
    """

    num_classes: int

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int("data.batch_size", batch_size)
        check_in_range("data.val_fraction", val_fraction, 0.0, 1.0)
        check_in_range("data.test_fraction", test_fraction, 0.0, 1.0)
        if val_fraction + test_fraction >= 1.0:
            raise HooktrainError(
                f"`data.val_fraction` + `data.test_fraction` must leave samples to train on, got {val_fraction} + {test_fraction}"
            )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.splits: dict[str, TensorDataset] = {}

    def load(self) -> tuple[Tensor, Tensor]:
        """Returns images ``(N, C, H, W)`` as float and labels ``(N,)`` as int64."""
        raise NotImplementedError

    def load_test(self) -> tuple[Tensor, Tensor] | None:
        """The data set's own test images and labels, where it has them (MNIST's 10,000); None: ``test_fraction`` of
        :meth:`load` is held out instead."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = self.load()
        own_test = self.load_test()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        num_val = round(len(labels) * self.val_fraction)
        num_test = 0 if own_test is not None else round(len(labels) * self.test_fraction)
        parts = {"test": order[:num_test], "val": order[num_test : num_test + num_val], "train": order[num_test + num_val :]}
        train = images[parts["train"]]
        mean, std = train.mean(), train.std().clamp_min(1e-8)
        self.splits = {name: BatchIndexedTensors((images[idx] - mean) / std, labels[idx]) for name, idx in parts.items()}
        if own_test is not None:
            self.splits["test"] = BatchIndexedTensors((own_test[0] - mean) / std, own_test[1])

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A few training images, to check that the model takes them before training starts."""
        self.setup()
        return self.splits["train"].tensors[0][:batch_size]

    def train_dataloader(self) -> DataLoader:
        # Lightning stops shuffling for `overfit_batches` by replacing DataLoader.sampler, which does not
        # draw this loader's order (its batch sampler's does): the same batches each epoch are asked for here.
        overfitting = self.trainer is not None and self.trainer.overfit_batches > 0
        return self._loader("train", shuffle=not overfitting)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        data = self.splits[split]
        sampler = EpochShuffle(data, self.seed) if shuffle else SequentialSampler(data)
        return DataLoader(
            data,
            batch_sampler=WholeBatches(sampler, self.batch_size, drop_last=False),
            collate_fn=batch_as_is,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
