"""Real multi-process DDP on the CPU (gloo), launched by Lightning from the command line."""

from types import SimpleNamespace

import pytest
import torch

from hooktrain import PluginRunner

from conftest import run_cli
from test_train import ALL_PLUGINS


def every_plugin(run_dir) -> list[str]:
    return [
        "train.py", "model=mlp", "trainer.max_epochs=1", "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false",
        f"plugins=[{','.join(ALL_PLUGINS)}]", *[f"plugins.{name}.every_n_steps=1" for name in ALL_PLUGINS],
        "plugins.grad_clip.log_every_n_steps=1", "plugins.pruning.log_every_n_steps=1", "plugins.nan_guard.log_every_n_steps=1",
        "plugins.pruning.start=0", "plugins.pruning.end=4", "plugins.pruning.amount=0.5", f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_with_every_plugin(tmp_path):
    result = run_cli(*every_plugin(tmp_path / "ddp"), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    assert sorted(path.name for path in run_dir.iterdir() if path.is_dir()) == [".hydra", "checkpoints", "tensorboard"]
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same run directory
    writers = {path.name.split(".")[-2] for path in (run_dir / "tensorboard").glob("events.*")}
    assert len(writers) == 1  # one process (rank 0) wrote every event file
    ddp = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = ddp["state_dict"]
    assert state["plugin_state.nan_guard.checked_steps"].item() == 6
    assert state["plugin_state.grad_logger.updates"].item() == 6
    assert state["plugin_state.pruning.target_sparsity"].item() == pytest.approx(0.5)

    assert run_cli(*every_plugin(tmp_path / "single")).returncode == 0
    single = torch.load(tmp_path / "single" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ddp.keys() == single.keys()  # the same checkpoint a single process writes
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in single["state_dict"].items()}
    assert ddp["global_step"] == single["global_step"] == 6


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


def _reduce_on_rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=DDPStrategy().reduce))
        recorded = {
            "a": {"norm": torch.tensor([1.0, 2.0]) * (rank + 1), "hist": torch.full((2, 3), float(rank))},
            "b": {"time_ms": torch.tensor([10.0 * rank])},
        }
        PluginRunner._reduce(trainer, recorded)  # Lightning's own DDP reduce over a real gloo group
        results[rank] = {name: {stat: value.tolist() for stat, value in stats.items()} for name, stats in recorded.items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_statistics_are_averaged_over_ranks_with_one_all_reduce():
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_reduce_on_rank, args=(29544, results), nprocs=2)
    expected = {"a": {"norm": [1.5, 3.0], "hist": [[0.5] * 3] * 2}, "b": {"time_ms": [5.0]}}
    assert results[0] == results[1] == expected
