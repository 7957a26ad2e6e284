"""ablate: outputs replaced as asked, in every phase by default, so the test measures the ablated model."""

import logging

import pytest
import torch
from torch import nn

from hooktrain import HookSession, HooktrainError, train
from plugins.ablate import Ablate


def ablated_output(**kwargs):
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), torch.randn(5, 4)
    plain = model[0](x)
    with HookSession(model, [Ablate(name="ablate", targets=["0"], **kwargs)]) as session, session.step(0):
        seen = {}
        model[0].register_forward_hook(lambda module, args, output: seen.setdefault("output", output))  # after ablate's hook
        model(x)
    return plain.detach(), seen["output"].detach()


def test_zero_ablation_of_chosen_units_leaves_the_others():
    plain, ablated = ablated_output(units=[1])
    assert (ablated[:, 1] == 0).all()
    torch.testing.assert_close(ablated[:, [0, 2]], plain[:, [0, 2]])


def test_mean_ablation_puts_each_units_batch_mean():
    plain, ablated = ablated_output(mode="mean")
    torch.testing.assert_close(ablated, plain.mean(dim=0, keepdim=True).expand_as(plain))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, r"`plugins.ablate.targets`: name the modules to ablate, e.g. plugins.ablate.targets=\[classifier.fc2\]"),
        ({"targets": ["fc1"], "mode": "noise"}, r"`plugins.ablate.mode` must be one of \['zero', 'mean'\], got 'noise'"),
        ({"targets": ["fc1"], "units": [-1]}, r"`plugins.ablate.units` must be a list of integers >= 0, got \[-1\]"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(HooktrainError, match=message):
        Ablate(name="ablate", **kwargs)


def test_a_unit_beyond_the_layer_is_named_before_training(make_cfg):
    with pytest.raises(HooktrainError, match=r"`plugins.ablate.units`: module 'classifier.fc2' has 84 units \(0 to 83\), got unit 84"):
        train(make_cfg("plugins=[ablate]", "plugins.ablate.targets=[classifier.fc2]", "plugins.ablate.units=[84]"))


LEARN = ["trainer.max_epochs=3", "trainer.limit_train_batches=40", "trainer.limit_val_batches=1", "trainer.limit_test_batches=null"]


@pytest.mark.slow
def test_the_logged_test_accuracy_is_the_ablated_models(make_cfg, tmp_path, caplog):
    intact = train(make_cfg(*LEARN, f"paths.output_dir={tmp_path / 'intact'}"))["test/acc"]
    with caplog.at_level(logging.WARNING, logger="hooktrain.run"):
        ablated = train(make_cfg(*LEARN, "plugins=[ablate]", "plugins.ablate.targets=[classifier.fc2]", f"paths.output_dir={tmp_path / 'a'}"))
    at_test_only = train(make_cfg(*LEARN, "plugins=[ablate]", "plugins.ablate.targets=[classifier.fc2]", "plugins.ablate.phases=[test]",
                                  f"paths.output_dir={tmp_path / 'b'}"))
    assert intact > 0.8
    # fc2's output all zero: the logits are fc3's bias, one class for every image; the test split has 27 of each class or so
    assert ablated["test/acc"] < 0.15 and at_test_only["test/acc"] < 0.15
    assert "model.pt alone does not reproduce the tested model: plugin(s) 'ablate'" in caplog.text
