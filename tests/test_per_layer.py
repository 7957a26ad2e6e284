"""Per-layer settings from config: initialization schemes by glob or type, optimizer parameter groups by glob."""

import pytest
import torch
from hydra.utils import instantiate

from hooktrain import HooktrainError
from hooktrain.init import initialize
from hooktrain.models import LeNet
from hooktrain.run import build_run


def test_init_rules_apply_in_order_by_type_and_glob():
    torch.manual_seed(0)
    model = LeNet(in_channels=1, num_classes=10, image_size=32)
    before = model.features.conv2.weight.clone()
    initialize(model, [
        {"types": ["Linear"], "weight": "constant", "args": {"val": 0.5}, "bias": "ones"},
        {"targets": ["classifier.fc3"], "weight": "zeros"},  # later rules win
        {"targets": ["features.conv1"], "weight": "kaiming_normal", "args": {"nonlinearity": "relu"}},
    ])
    assert (model.classifier.fc1.weight == 0.5).all() and (model.classifier.fc1.bias == 1).all()
    assert (model.classifier.fc3.weight == 0).all() and (model.classifier.fc3.bias == 1).all()
    fan_in = 1 * 5 * 5
    assert model.features.conv1.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.25)  # He: std sqrt(2 / fan_in)
    assert torch.equal(model.features.conv2.weight, before)  # no rule selected it


def test_init_args_without_a_weight_scheme_are_refused_not_ignored():
    with pytest.raises(HooktrainError, match=r"`init\[0\].args` are the `weight` scheme's arguments; set `init\[0\].weight`"):
        initialize(LeNet(), [{"types": ["Linear"], "bias": "zeros", "args": {"nonlinearity": "relu"}}])


def test_init_from_the_command_line_reaches_the_model(make_cfg):
    run = build_run(make_cfg("init=[{types:[Linear],weight:ones,bias:zeros}]"))
    assert (run.task.model.classifier.fc2.weight == 1).all() and (run.task.model.classifier.fc2.bias == 0).all()


def test_param_groups_give_the_features_their_own_learning_rate(make_cfg):
    run = build_run(make_cfg("task.param_groups=[{targets:[features.*],lr:0.0002}]", "task.scheduler=null"))
    optimizer = run.task.configure_optimizers()
    rest, features = optimizer.param_groups
    assert features["lr"] == 0.0002 and rest["lr"] == 0.002
    feature_params = {id(param) for param in run.task.model.features.parameters()}
    assert {id(param) for param in features["params"]} == feature_params
    assert not feature_params & {id(param) for param in rest["params"]}


def test_a_parameter_goes_to_the_first_group_that_selects_it():
    from hooktrain.param_groups import parameter_groups

    model = instantiate({"_target_": "hooktrain.models.MLP", "in_features": 4, "hidden_sizes": [3]})
    first, second = parameter_groups(model, [{"targets": ["fc1"], "lr": 1.0}, {"types": ["Linear"], "lr": 2.0}])  # no rest: both took all
    assert [param.shape for param in first["params"]] == [(3, 4), (3,)] and [param.shape for param in second["params"]] == [(10, 3), (10,)]
    assert (first["lr"], second["lr"]) == (1.0, 2.0)
    with pytest.raises(HooktrainError, match=r"`task.param_groups\[1\]` selects no parameter that an earlier entry did not take"):
        parameter_groups(model, [{"types": ["Linear"], "lr": 1.0}, {"targets": ["head"], "lr": 2.0}])


@pytest.mark.parametrize("engine", ["cpu", "fabric"])
def test_each_parameter_groups_learning_rate_is_charted_as_lightning_names_it(make_cfg, tmp_path, engine):
    from hooktrain import train
    from test_train import read_events

    train(make_cfg(f"trainer={engine}", "task.param_groups=[{targets:[features.*],lr:0.0002}]"))
    events = read_events(tmp_path / "tensorboard")
    rates = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("lr-")}
    assert rates.keys() == {"lr-Adam/pg1", "lr-Adam/pg2"} and rates["lr-Adam/pg2"] == pytest.approx(rates["lr-Adam/pg1"] / 10)
