"""A multi-layer perceptron over flattened inputs."""

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from hooktrain.errors import HooktrainError, check_in_range


def activation_class(name: str) -> type[nn.Module]:
    """Looks up an activation by its torch.nn class name (``ReLU``, ``GELU``, ``Tanh``, ...)."""
    cls = getattr(nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == "torch.nn.modules.activation"):
        raise HooktrainError(f"`activation` must name a torch.nn activation such as ReLU, GELU or Tanh, got {name!r}")
    return cls


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> activation [-> Dropout]`` per hidden size, then a Linear head.

    Layers are named ``fc1, act1, drop1, fc2, ...`` and ``head``, so targets read well (``fc*``).

    Args:
        in_features: size of one flattened input (64 for the 8x8 digits).
        hidden_sizes: width of each hidden layer; empty for a linear model.
        num_classes: number of outputs (logits).
        activation: a torch.nn activation class name.
        dropout: dropout probability after each activation, in [0, 1); 0 adds no Dropout layer.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int] = (128, 64),
        num_classes: int = 10,
        activation: str = "ReLU",
        dropout: float = 0.0,
    ) -> None:
        check_in_range("dropout", dropout, 0.0, 1.0)
        act = activation_class(activation)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, hidden in enumerate(hidden_sizes, start=1):
            layers[f"fc{i}"] = nn.Linear(width, hidden)
            layers[f"act{i}"] = act()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = hidden
        layers["head"] = nn.Linear(width, num_classes)
        super().__init__(layers)
