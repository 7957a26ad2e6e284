"""A run killed with SIGKILL mid-training resumes from its last checkpoint and finishes."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli

ARGS = ["train.py", "model=mlp", "trainer.max_epochs=40", "trainer.enable_progress_bar=false", "plugins=[grad_logger,pruning]",
        "plugins.grad_logger.every_n_steps=5"]


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, *ARGS, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once last.ckpt has been written a second time (epoch >= 1 is on disk), polling rather than sleeping
    # a fixed time, so a busy machine only makes the wait longer.
    deadline, first_write = time.monotonic() + 240, None
    while time.monotonic() < deadline and process.poll() is None:
        if last.exists():
            written = last.stat().st_mtime_ns
            first_write = first_write or written
            if written != first_write:
                break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "model.pt").exists()

    killed_at = torch.load(last, weights_only=True)  # never half-written: Lightning saves atomically
    assert 0 < killed_at["epoch"] < 39
    result = run_cli(*ARGS, f"hydra.run.dir={tmp_path}", f"ckpt_path={last}")
    assert result.returncode == 0, result.stderr[-2000:]
    finished = torch.load(last, weights_only=True)
    assert finished["epoch"] == 39 and finished["global_step"] == 40 * 40  # 1,257 samples / 32 = 40 steps an epoch
    assert finished["state_dict"]["plugin_state.grad_logger.updates"] == 40 * 40 // 5
    assert (tmp_path / "model.pt").is_file()
