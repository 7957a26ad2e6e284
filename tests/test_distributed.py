"""Real multi-process DDP on the CPU (gloo), launched by Lightning from the command line."""

import pytest
import torch

from conftest import every_plugin, run_cli


def cli_with_every_plugin(run_dir) -> list[str]:
    return [
        "train.py", "model=mlp", "trainer.max_epochs=1", "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false",
        *every_plugin(log_every_n_steps=1),
        "plugins.pruning.start=0", "plugins.pruning.end=4", "plugins.pruning.amount=0.5", f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_with_every_plugin(tmp_path):
    result = run_cli(*cli_with_every_plugin(tmp_path / "ddp"), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
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

    assert run_cli(*cli_with_every_plugin(tmp_path / "single")).returncode == 0
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


def _combine_on_rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from hooktrain.session import _default_all_reduce
    from hooktrain.stats import StepStats

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        stats = StepStats(num_modules=2)
        for call in range(rank + 1):  # rank 0 calls module 0 once, rank 1 twice: a mean of calls, not of ranks
            stats.add("norm", 0, torch.tensor(float(rank * 10 + call)))
        stats.add("count", 0, torch.tensor(rank + 1.0), reduce="sum")
        stats.add("peak", 1, torch.tensor([1.0, 5.0]) * (rank + 1), reduce="max")
        stats.add("low", 1, torch.tensor(-3.0 * rank), reduce="min")
        combined = stats.combined(_default_all_reduce())  # torch.distributed over a real gloo group
        results[rank] = {stat: [None if v != v else v for v in value.flatten().tolist()] for stat, value in combined.items()}  # NaN: None
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_statistics_combine_over_ranks_by_their_reduction():
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_combine_on_rank, args=(29544, results), nprocs=2)
    assert results[0] == results[1]
    assert results[0] == {
        "norm": [pytest.approx((0 + 10 + 11) / 3), None],  # module 1 recorded nothing: NaN
        "count": [3.0, None],
        "peak": [None, None, 2.0, 10.0],
        "low": [None, -3.0],
    }
