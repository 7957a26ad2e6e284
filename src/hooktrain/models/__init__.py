"""Built-in models: plain nn.Modules, built from configs by hydra.utils.instantiate."""

from hooktrain.models.blocks import ConvBlock, sequential
from hooktrain.models.lenet import LeNet
from hooktrain.models.mlp import MLP

__all__ = ["ConvBlock", "LeNet", "MLP", "sequential"]
