"""Exact resume: 2 epochs straight equal 1 epoch, resume, 1 epoch, bit for bit, with every plugin on."""

import pytest
import torch

from hooktrain import train
from conftest import every_plugin

# Wall-clock timings cannot repeat bit for bit; everything else must.
NOT_REPRODUCIBLE = ("plugin_state.module_timer.",)


def run(make_cfg, out, *extra):
    train(make_cfg(
        "model=mlp", "trainer.deterministic=true", "task.scheduler.T_max=2",  # the schedule of the 2-epoch run in both
        *every_plugin(),
        "plugins.pruning.method=random_unstructured", "plugins.pruning.start=0", "plugins.pruning.end=8",
        f"paths.output_dir={out}", *extra,
    ))
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resuming in place
def test_straight_and_resumed_runs_are_bitwise_identical(make_cfg, tmp_path):
    straight = run(make_cfg, tmp_path / "straight", "trainer.max_epochs=2")
    run(make_cfg, tmp_path / "resumed", "trainer.max_epochs=1")
    resumed = run(make_cfg, tmp_path / "resumed", "trainer.max_epochs=2",
                  f"ckpt_path={tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt'}")
    assert (straight["global_step"], resumed["global_step"]) == (8, 8)
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        if not key.startswith(NOT_REPRODUCIBLE):
            assert torch.equal(value, resumed["state_dict"][key]), key
    for a, b in zip(straight["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()):
        for name in a:
            assert torch.equal(a[name], b[name]), name
