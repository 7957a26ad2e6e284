"""Parts that do not train: a constant random weight kept as a buffer, and a module frozen in place."""

import torch
from torch import Tensor, nn


class FixedLinear(nn.Module):
    """``x @ weight + bias`` with ``weight`` drawn once from ``seed`` (uniform in [0, 1)) and never trained.

    The tutorial's FixedHiddenMLP keeps such a ``rand_weight``; here it is a buffer, so it is saved in
    ``state_dict`` and moves with the model, but no optimizer sees it.

    Args:
        features: input and output size.
        bias: a constant added to every output.
        seed: seed of the weight, so the same config builds the same constant.
    """

    def __init__(self, features: int, bias: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("weight", torch.rand(features, features, generator=torch.Generator().manual_seed(seed)))
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias

    def extra_repr(self) -> str:
        return f"features={self.weight.shape[0]}, bias={self.bias}"


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with every parameter's ``requires_grad`` off: kept in ``state_dict``, trained no further.

    In YAML: ``{_target_: hooktrain.models.frozen, module: {_target_: ..., ...}}``.
    """
    return module.requires_grad_(False)
