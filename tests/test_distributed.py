"""Real multi-process DDP on the CPU (gloo), launched by Lightning from the command line."""

import pytest
import torch

from conftest import run_cli
from test_train import ALL_PLUGINS


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_with_every_plugin(tmp_path):
    result = run_cli(
        "train.py", "model=mlp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
        "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false", f"plugins=[{','.join(ALL_PLUGINS)}]",
        *[f"plugins.{name}.every_n_steps=1" for name in ALL_PLUGINS], "plugins.grad_clip.log_every_n_steps=1",
        "plugins.pruning.log_every_n_steps=1", "plugins.nan_guard.log_every_n_steps=1",
        "plugins.pruning.start=0", "plugins.pruning.end=4", "plugins.pruning.amount=0.5", f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == [".hydra", "checkpoints", "tensorboard"]
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same run directory
    writers = {path.name.split(".")[-2] for path in (tmp_path / "tensorboard").glob("events.*")}
    assert len(writers) == 1  # one process (rank 0) wrote every event file
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["plugin_state.nan_guard.checked_steps"].item() == 6
    assert state["plugin_state.grad_logger.updates"].item() == 6
    assert state["plugin_state.pruning.target_sparsity"].item() == pytest.approx(0.5)


@pytest.mark.slow
def test_torchrun_launches_the_same_config(tmp_path):
    result = run_cli(
        "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "train.py", "model=mlp",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.enable_progress_bar=false", "plugins=[grad_logger]", "plugins.grad_logger.every_n_steps=1", f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    writers = {path.name.split(".")[-2] for path in (tmp_path / "tensorboard").glob("events.*")}
    assert len(writers) == 1
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["plugin_state.grad_logger.updates"].item() == 4
