import pytest
from torch import nn

from hooktrain.errors import HooktrainError
from hooktrain.models import LeNet
from hooktrain.select import select_modules


def _names(selection):
    return [name for name, _ in selection]


def test_default_is_every_leaf_module_with_parameters():
    selected = _names(select_modules(LeNet(), [], [], "plugins.p"))
    assert selected == ["features.conv1", "features.conv2", "classifier.fc1", "classifier.fc2", "classifier.fc3"]


def test_globs_and_types_narrow_the_selection():
    model = LeNet()
    assert _names(select_modules(model, ["features.*"], [], "p")) == [
        "features.conv1", "features.act1", "features.pool1", "features.conv2", "features.act2", "features.pool2",
    ]
    assert _names(select_modules(model, ["features.*"], ["Conv2d"], "p")) == ["features.conv1", "features.conv2"]
    assert _names(select_modules(model, [], ["_ConvNd"], "p")) == ["features.conv1", "features.conv2"]  # base classes match
    assert _names(select_modules(model, ["classifier"], [], "p")) == ["classifier"]


def test_a_pattern_matching_nothing_is_an_error_naming_it():
    with pytest.raises(HooktrainError, match=r"`plugins.grad_logger.targets`: pattern 'conv\*' matches no module .* features.conv1 \(Conv2d\)"):
        select_modules(LeNet(), ["conv*"], [], "plugins.grad_logger")
    with pytest.raises(HooktrainError, match=r"`p.types`: no module of the model is a 'LSTM'"):
        select_modules(LeNet(), [], ["LSTM"], "p")
    with pytest.raises(HooktrainError, match=r"no module matches both targets \['classifier.\*'\] and types \['Conv2d'\]"):
        select_modules(LeNet(), ["classifier.*"], ["Conv2d"], "p")


def test_a_plugins_default_types_choose_when_the_config_names_nothing_and_fall_back_to_layers():
    assert _names(select_modules(LeNet(), [], [], "p", default_types=("ReLU", "Tanh"))) == [
        "features.act1", "features.act2", "classifier.act3", "classifier.act4"
    ]
    assert _names(select_modules(LeNet(), ["features.*"], [], "p", default_types=("ReLU",)))[0] == "features.conv1"  # the user's choice wins
    no_activation_module = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert _names(select_modules(no_activation_module, [], [], "p", default_types=("ReLU",))) == ["0", "1"]


def test_a_shared_module_matches_by_either_of_its_names_and_is_listed_once_under_its_first():
    shared = nn.Linear(2, 2)
    model = nn.Module()
    model.encoder, model.decoder, model.head = shared, shared, nn.Linear(2, 1)  # weight tying: one module, two names
    for pattern in ("encoder", "decoder"):
        assert select_modules(model, [pattern], [], "p") == [("encoder", shared)]
    assert _names(select_modules(model, ["*"], [], "p")) == ["encoder", "head"]
