"""Chain: modules called in a configured order, where a name listed twice is one module called twice (shared weights)."""

from collections.abc import Sequence

from torch import Tensor, nn

from hooktrain.errors import HooktrainError


class Chain(nn.Module):
    """Calls its modules in the order ``steps`` names them; a module named twice is built once and called twice.

    What ``${.linear}`` cannot do in YAML (an interpolation copies the config, so it builds a second layer):
    the tutorial's FixedHiddenMLP applies one ``nn.Linear`` twice, and its weight is one tensor in ``state_dict``.

    Args:
        steps: module names in call order, each a keyword below; repeat a name to reuse its module.
        **modules: the modules, each built once, registered under its keyword.
    """

    def __init__(self, steps: Sequence[str], **modules: nn.Module) -> None:
        super().__init__()
        unknown = [name for name in steps if name not in modules]
        if unknown or not steps:
            raise HooktrainError(f"`steps` must name modules of this chain ({', '.join(modules) or 'none given'}), got {list(steps)}")
        uncalled = [name for name in modules if name not in steps]
        if uncalled:
            raise HooktrainError(f"`steps` never calls {', '.join(uncalled)}: list it in `steps`, or leave it out of the chain")
        for name, module in modules.items():
            if not isinstance(module, nn.Module):
                raise HooktrainError(f"`{name}` must be a module (a config with a _target_), got {type(module).__name__}")
            self.add_module(name, module)
        self.steps = list(steps)

    def forward(self, x: Tensor) -> Tensor:
        for name in self.steps:
            x = self._modules[name](x)
        return x

    def extra_repr(self) -> str:
        return "steps=" + " -> ".join(self.steps)
