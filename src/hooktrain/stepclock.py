"""Step times of training runs, read where the loader hands out batches, alone or in turn with other runs.

Each engine fetches its next batch once per optimizer step, so the loader is the one place where
every variant of the benchmark (a raw loop, plain Lightning, both hooktrain engines) can be timed
alike without touching its loop. In turn (:func:`in_turn`), several runs train side by side in one
thread, each a greenlet that hands control on at each batch: one step of each, round and round.
A disturbance of the shared machine that lasts longer than a step then lands on every run alike,
instead of lifting whole runs by 20-40% as it does when runs follow each other. Greenlets, not
threads: PyTorch's CPU kernels ran LeNet's step twice as slow from a second thread here (OpenMP).
"""

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader


def now() -> float:
    """The time, after the GPU's queued work (if any) is done."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class Stamps:
    """A run's step boundaries: ``starts[k]`` as batch ``k`` is handed out, ``ends[k]`` as batch ``k + 1`` is asked for.

    Alone, a step ends where the next starts. In turn (``scheduler``: the greenlet that runs the
    runs), the run hands control back between the two, so a step's time holds its own work only.
    """

    def __init__(self, scheduler: Any = None) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.scheduler = scheduler

    def __len__(self) -> int:
        return len(self.starts)

    def batch_handed_out(self) -> None:
        """Marks a step boundary (the loader has the next batch); in turn, the other runs take their step in between."""
        if self.scheduler is None:
            moment = now()
            if self.starts:
                self.ends.append(moment)
            self.starts.append(moment)
            return
        if self.starts:
            self.ends.append(now())
        grad_enabled = torch.is_grad_enabled()  # thread-local: the other runs share this thread
        self.scheduler.switch()  # the other runs take their step
        torch.set_grad_enabled(grad_enabled)
        self.starts.append(now())

    def step_times(self, skip: int) -> list[float]:
        """Seconds of each step after the first ``skip``."""
        return [end - start for start, end in zip(self.starts[skip:], self.ends[skip:])]


def in_turn(runs: dict[str, Callable[["Stamps"], None]]) -> dict[str, Stamps]:
    """Calls each ``run(stamps)`` (a training run whose loader writes to ``stamps``) in its own greenlet: first every
    run's set-up up to its first batch, then one step of each in turn until all have ended. A run's end (after its
    last batch) runs alone too. An error in one run stops all and is raised here."""
    try:
        from greenlet import getcurrent, greenlet
    except ImportError:
        raise ModuleNotFoundError("stepping runs in turn needs greenlet: pip install 'hooktrain[bench]'") from None
    stamps = {name: Stamps(getcurrent()) for name in runs}
    pending = {name: greenlet(run) for name, run in runs.items()}
    grad_enabled = torch.is_grad_enabled()
    try:
        while pending:
            for name, run in list(pending.items()):
                torch.set_grad_enabled(grad_enabled)  # a run starts as the caller is; a resumed one restores its own
                run.switch(stamps[name])  # its first switch starts it with its stamps; later ones resume it
                if run.dead:
                    del pending[name]
    finally:
        torch.set_grad_enabled(grad_enabled)
    return stamps


class StampedLoader(DataLoader):
    """A training loader that marks each step's boundaries as it hands out batches: the same in every variant."""

    stamps: Stamps

    def __iter__(self):
        for batch in super().__iter__():
            self.stamps.batch_handed_out()
            yield batch


def stamp_batches(datamodule: pl.LightningDataModule, stamps: Stamps) -> None:
    """Makes ``datamodule.train_dataloader()`` a :class:`StampedLoader` writing to ``stamps``, otherwise the same loader."""
    original = datamodule.train_dataloader

    def train_dataloader() -> StampedLoader:
        loader = original()
        stamped = StampedLoader(
            loader.dataset, batch_sampler=loader.batch_sampler, collate_fn=loader.collate_fn, num_workers=loader.num_workers
        )
        stamped.stamps = stamps
        return stamped

    datamodule.train_dataloader = train_dataloader
