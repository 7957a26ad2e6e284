"""One run per directory, and checkpoints that a kill cannot destroy, with real processes."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli
from hooktrain.errors import HooktrainError
from hooktrain.rundir import run_directory

LONG = ["train.py", "model=mlp", "trainer.max_epochs=40", "trainer.enable_progress_bar=false"]


def wait_for(condition, seconds=240):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never came true")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_one_run_per_directory(tmp_path):
    # 400 epochs: still training while the second run starts, however slowly (40 epochs could end first on a busy machine)
    first = subprocess.Popen(
        [sys.executable, *LONG, "trainer.max_epochs=400", f"hydra.run.dir={tmp_path}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: (tmp_path / "checkpoints" / "last.ckpt").exists())  # the first run is training
        second = run_cli(*LONG, f"hydra.run.dir={tmp_path}")
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: the run directory {tmp_path} is in use by process {first.pid}; give this run its own, e.g. hydra.run.dir={tmp_path}_2"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert len(list((tmp_path / "tensorboard").glob("events.*"))) == 1  # the second run wrote no log of its own

    fresh = run_cli(*LONG, f"hydra.run.dir={tmp_path}")  # the first has ended: its outputs are still not to be overwritten
    assert fresh.returncode == 1
    assert f"holds an earlier run's checkpoints; resume it with ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}" in fresh.stderr
    resumed = run_cli(  # the schedule of the first run's 400 epochs, for 3 more seconds
        *LONG, "trainer.max_epochs=400", "trainer.max_time=00:00:00:03", f"hydra.run.dir={tmp_path}", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "model.pt").is_file()


def test_a_finished_runs_outputs_are_kept_unless_this_run_resumes_from_them(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")  # a run without checkpoints leaves its model.pt alone
    with pytest.raises(HooktrainError, match="holds an earlier run's model.pt; resume it with ckpt_path="):
        with run_directory(tmp_path, None):
            pass
    with pytest.raises(HooktrainError, match="holds an earlier run's model.pt"):
        with run_directory(tmp_path, str(tmp_path.parent / "elsewhere" / "last.ckpt")):
            pass
    for resuming_from in ("last", "best", str(tmp_path / "checkpoints" / "last.ckpt")):  # Lightning's names, or a path in it
        with run_directory(tmp_path, resuming_from):
            pass


def test_the_other_ranks_of_a_run_share_its_directory(tmp_path, monkeypatch):
    with run_directory(tmp_path, None):  # rank 0 holds the lock
        monkeypatch.setenv("LOCAL_RANK", "1")
        with run_directory(tmp_path, None):
            pass
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(HooktrainError, match="is in use by process"):
            with run_directory(tmp_path, None):
                pass


KILL_IN_THIRD_SAVE = """
import os, runpy, signal, sys, torch
original, saves = torch.save, []
def save(obj, file, *args, **kwargs):
    saves.append(1)
    if len(saves) == 3:  # the first checkpoint of epoch 1: half written, then the process dies
        file.write(b"half a checkpoint")
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(obj, file, *args, **kwargs)
torch.save = save
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_kill_during_a_checkpoint_write_keeps_the_last_good_one(tmp_path):
    other_filesystem = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    args = ["model=mlp", "trainer.max_epochs=3", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"]
    killed = run_cli("-c", KILL_IN_THIRD_SAVE, *args, env={"TMPDIR": other_filesystem})
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0  # epoch 0's, whole
    assert len(list(checkpoints.glob(".*.partial"))) == 1  # what the kill interrupted, beside its target, not in TMPDIR

    resumed = run_cli("train.py", *args, f"ckpt_path={checkpoints / 'last.ckpt'}", env={"TMPDIR": other_filesystem})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2
    assert list(checkpoints.glob(".*.partial")) == []  # the next save cleared the leftover
