import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from hooktrain.errors import HooktrainError
from hooktrain.models import MLP, ConvBlock, LeNet, sequential


@pytest.mark.parametrize("image_size", [32, 28, 16])
def test_lenet_maps_images_to_logits(image_size):
    model = LeNet(in_channels=3, num_classes=7, image_size=image_size)
    assert model(torch.randn(5, 3, image_size, image_size)).shape == (5, 7)


def test_lenet_rejects_images_too_small():
    with pytest.raises(HooktrainError, match=r"`model.image_size` must be at least 16 for LeNet, got 12"):
        LeNet(image_size=12)


def test_mlp_names_its_layers_and_maps_to_logits():
    model = MLP(in_features=64, hidden_sizes=[32, 16], num_classes=10, activation="GELU", dropout=0.2)
    assert [name for name, _ in model.named_children()] == [
        "flatten", "fc1", "act1", "drop1", "fc2", "act2", "drop2", "head",
    ]
    assert isinstance(model.act1, nn.GELU)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_mlp_rejects_unknown_activation_and_bad_dropout():
    with pytest.raises(HooktrainError, match=r"`activation` must name a torch.nn activation .* got 'Relu'"):
        MLP(in_features=4, activation="Relu")
    with pytest.raises(HooktrainError, match=r"`dropout` must be a number in \[0.0, 1.0\), got 1.5"):
        MLP(in_features=4, dropout=1.5)


def test_sequential_keeps_the_names_given():
    model = sequential(features=ConvBlock(1, 4), head=MLP(in_features=4 * 4 * 4, hidden_sizes=[]))
    assert [name for name, _ in model.named_children()] == ["features", "head"]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_built_in_models_have_no_inplace_ops(make_cfg):
    for name in ["lenet", "mlp", "nested"]:
        model = instantiate(make_cfg(f"model={name}").model)
        inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
        assert inplace == [], f"{name}: {inplace}"


def test_nested_config_composes_blocks_inside_blocks(make_cfg):
    cfg = make_cfg("model=nested")
    model = instantiate(cfg.model)
    names = {name for name, _ in model.named_modules()}
    assert {"features", "features.block1", "features.block1.conv", "features.block2.norm", "head.fc1", "head.head"} <= names
    assert isinstance(model.features.block2, ConvBlock)
    assert model(torch.randn(3, 1, cfg.data.image_size, cfg.data.image_size)).shape == (3, 10)


@pytest.mark.parametrize("model_name,image_size", [("lenet", 32), ("mlp", 8), ("nested", 8)])
def test_data_is_resized_to_each_model_input(make_cfg, model_name, image_size):
    cfg = make_cfg(f"model={model_name}")
    assert cfg.data.image_size == image_size
    model = instantiate(cfg.model)
    assert model(torch.randn(2, 1, image_size, image_size)).shape == (2, 10)


def test_a_chain_calls_a_module_named_twice_with_one_weight():
    from hooktrain.models import Chain

    linear = nn.Linear(4, 4)
    chain = Chain(["linear", "act", "linear"], linear=linear, act=nn.ReLU())
    x = torch.randn(3, 4)
    assert torch.equal(chain(x), linear(torch.relu(linear(x))))
    assert list(chain.state_dict()) == ["linear.weight", "linear.bias"]  # one tensor each, though called twice
    with pytest.raises(HooktrainError, match=r"`steps` never calls extra"):
        Chain(["linear"], linear=nn.Linear(2, 2), extra=nn.ReLU())


def test_a_fixed_linear_is_a_constant_buffer_and_frozen_modules_keep_their_weights():
    from hooktrain.models import FixedLinear, frozen

    fixed = FixedLinear(5, bias=1.0, seed=3)
    assert not list(fixed.parameters()) and list(fixed.state_dict()) == ["weight"]
    assert torch.equal(fixed.weight, FixedLinear(5, seed=3).weight)  # the seed makes the constant
    assert torch.allclose(fixed(torch.eye(5)), fixed.weight + 1.0)
    layer = frozen(nn.Linear(3, 3))
    assert not any(param.requires_grad for param in layer.parameters())


@pytest.mark.slow
def test_the_chimera_trains_with_every_plugin_its_shared_layer_hooked_once_called_twice(make_cfg, tmp_path, caplog):
    import logging

    from conftest import every_plugin
    from hooktrain import train

    cfg = make_cfg("model=chimera", *every_plugin())
    built = instantiate(cfg.model)
    constant = built.fixed.mix.weight.clone()
    with caplog.at_level(logging.INFO, logger="hooktrain"):
        train(cfg)
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sorted(key for key in weights if key.startswith("fixed.linear.")) == ["fixed.linear.bias", "fixed.linear.weight"]
    assert torch.equal(weights["fixed.mix.weight"], constant)  # a buffer: built from its seed, never trained
    assert "fixed.linear  x2" in caplog.text  # the hook map: one module, two calls a step
