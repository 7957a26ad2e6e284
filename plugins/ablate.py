"""ablate: replaces the output of chosen modules, or of some of their units, by zeros or by its mean."""

import torch
from torch import Tensor, nn

from hooktrain.errors import HooktrainError
from hooktrain.plugin import HookContext, HookPlugin

MODES = ("zero", "mean")


class Ablate(HookPlugin):
    """Zero- or mean-ablates each selected module's output, whole or in chosen units: what does the model lose?

    Hooks: a forward hook returns the ablated output in place of the module's own. ``zero`` puts
    zeros; ``mean`` puts each unit's mean over the batch (and positions), a constant that keeps the
    layer's average and drops what it says about each sample. ``units`` limits this to some indices
    along dimension 1 (a convolution's channels, a linear layer's features).

    It acts in every phase by default, so validation and the final test measure the ablated model;
    ``phases: [test]`` ablates the final test only. ``model.pt`` cannot hold an ablation: the run
    says so at its end. Buffers: none. Logged: nothing (compare ``test/acc`` with and without).

    Args:
        mode: ``zero`` or ``mean``.
        units: indices along dimension 1 to ablate; empty: the whole output.
        **kwargs: ``every_n_steps``, ``targets``, ``types``, ``phases`` of :class:`HookPlugin`.
    """

    changes_training = True
    changes_forward = True
    example_settings = {"targets": "[*fc2]", "units": "[0]"}  # one unit of LeNet's and the MLP's second layer

    def __init__(self, mode: str = "zero", units: list[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if not self.targets and not self.types:
            raise HooktrainError(
                f"`{self.field('targets')}`: name the modules to ablate, e.g. plugins.ablate.targets=[classifier.fc2] "
                "(ablating every layer leaves nothing to measure)"
            )
        if mode not in MODES:
            raise HooktrainError(f"`{self.field('mode')}` must be one of {list(MODES)}, got {mode!r}")
        units = list(units or [])
        if not all(isinstance(unit, int) and not isinstance(unit, bool) and unit >= 0 for unit in units):
            raise HooktrainError(f"`{self.field('units')}` must be a list of integers >= 0, got {units}")
        self.mode, self.units = mode, sorted(set(units))
        self._masks: dict[tuple[int, torch.device], Tensor] = {}

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            width = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
            if width is not None and self.units and self.units[-1] >= width:
                raise HooktrainError(f"`{self.field('units')}`: module {name!r} has {width} units (0 to {width - 1}), got unit {self.units[-1]}")

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() < 2:
            raise TypeError(f"ablate needs an output tensor of shape (batch, units, ...), got {getattr(output, 'shape', type(output).__name__)}")
        if self.mode == "zero":
            replacement = torch.zeros_like(output)
        else:
            others = [dim for dim in range(output.dim()) if dim != 1]
            replacement = output.detach().mean(dim=others, keepdim=True).expand_as(output)
        if not self.units:
            return replacement
        return torch.where(self._unit_mask(output), replacement, output)

    def _unit_mask(self, output: Tensor) -> Tensor:
        """``(1, units, 1, ...)``: True for the ablated units; made once per width and device (no copy per call)."""
        key = (output.shape[1], output.device)
        if key not in self._masks:
            with torch.inference_mode(False):  # made during an evaluation, it is used by training's autograd later
                mask = torch.zeros(output.shape[1], dtype=torch.bool)
                mask[self.units] = True
                self._masks[key] = mask.to(output.device)
        return self._masks[key].view(1, -1, *[1] * (output.dim() - 2))
