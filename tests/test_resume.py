"""Exact resume: 2 epochs straight equal 1 epoch, resume, 1 epoch, bit for bit, with every plugin on."""

import pytest
import torch

from hooktrain import HooktrainError, train
from hooktrain.testing import identical
from conftest import ON_CPU_AND_CUDA, every_plugin

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
@pytest.mark.parametrize("device", ON_CPU_AND_CUDA)
def test_straight_and_resumed_runs_are_bitwise_identical(make_cfg, tmp_path, device):
    straight = run(make_cfg, tmp_path / "straight", "trainer.max_epochs=2", *device)
    run(make_cfg, tmp_path / "resumed", "trainer.max_epochs=1", *device)
    resumed = run(make_cfg, tmp_path / "resumed", "trainer.max_epochs=2", *device,
                  f"ckpt_path={tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt'}")
    assert (straight["global_step"], resumed["global_step"]) == (8, 8)
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        if not key.startswith(NOT_REPRODUCIBLE):
            assert identical(value, resumed["state_dict"][key]), key  # NaN: a layer picture's empty column
    for a, b in zip(straight["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()):
        for name in a:
            assert identical(a[name], b[name]), name


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resuming_with_a_longer_schedule_stops_with_the_choice(make_cfg, tmp_path):
    train(make_cfg("model=mlp", "trainer.max_epochs=1"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(HooktrainError, match=r"`task.scheduler.T_max`: the checkpoint's learning-rate schedule ends at epoch 1 .* "
                                             r"resume with trainer.max_epochs=1 to finish that run exactly"):
        train(make_cfg("model=mlp", "trainer.max_epochs=3", f"ckpt_path={last}"))
    train(make_cfg("model=mlp", "trainer.max_epochs=1", f"ckpt_path={last}"))  # the same schedule: resumes


@pytest.mark.parametrize("saved_with,resumed_with", [(["plugins=[pruning]"], []), ([], ["plugins=[pruning]"])])
def test_a_checkpoint_pruned_or_not_needs_the_same_pruning(make_cfg, tmp_path, saved_with, resumed_with):
    train(make_cfg("model=mlp", *saved_with))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(HooktrainError, match=r"holds the same model in another form .* must be configured as it was"):
        train(make_cfg("model=mlp", *resumed_with, f"ckpt_path={last}"))
