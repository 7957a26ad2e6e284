"""One run per directory: a lock for the run's life, and no new run over a finished one's outputs."""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hooktrain.errors import HooktrainError

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # torchrun, Lightning's launcher, SLURM


@contextmanager
def run_directory(path: Path, resuming_from: str | None) -> Iterator[None]:
    """Holds ``<path>/.lock`` while the run lives (the launching process only: other ranks share its directory).

    Raises:
        HooktrainError: another run holds the directory, or a finished run's outputs are there and this
            run does not resume from its checkpoint.
    """
    if any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES):
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise HooktrainError(
                f"the run directory {path} is in use by {holder}; give this run its own, e.g. hydra.run.dir={path}_2"
            ) from None
        resuming_here = resuming_from in ("last", "best") or (  # Lightning's names for this run's own checkpoints
            resuming_from is not None and Path(resuming_from).resolve().is_relative_to(path.resolve())
        )
        finished = [name for name in ("checkpoints", "model.pt") if (path / name).exists()]
        if finished and not resuming_here:
            raise HooktrainError(
                f"the run directory {path} holds an earlier run's {' and '.join(finished)}; resume it with "
                f"ckpt_path={path / 'checkpoints' / 'last.ckpt'}, or give this run its own hydra.run.dir"
            )
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
