"""Built-in models and building blocks: plain nn.Modules, built from configs by hydra.utils.instantiate."""

from hooktrain.models.blocks import ConvBlock, sequential
from hooktrain.models.chain import Chain
from hooktrain.models.fixed import FixedLinear, frozen
from hooktrain.models.lenet import LeNet
from hooktrain.models.mlp import MLP

__all__ = ["Chain", "ConvBlock", "FixedLinear", "LeNet", "MLP", "frozen", "sequential"]
