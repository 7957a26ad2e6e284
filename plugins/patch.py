"""patch: replaces chosen modules' outputs by those an activation_cache file holds, sample for sample (activation patching)."""

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from hooktrain.errors import HooktrainError
from hooktrain.plugin import HookContext, HookPlugin


class Patch(HookPlugin):
    """Puts stored activations in place of what the selected modules compute, as TransformerLens' ``run_with_hooks`` patching.

    ``file`` is an ``activation_cache`` file (``<run dir>/activations/<split>.safetensors``). Each
    batch's samples are looked up by their position in the split (``inputs_index``), so the file
    must hold every sample the phase runs, in any order. Patching a layer with its own cached
    activations leaves the accuracy as it was; with another split's (another input), what the
    accuracy loses is what that layer carries. Meant for ``python -m hooktrain analyze``, whose
    batches say their positions; ``model.pt`` cannot hold a patch.

    Args:
        file: the activation file.
        **kwargs: ``targets`` (required: the modules to patch), ``types``, ``phases`` of :class:`HookPlugin`.
    """

    changes_training = True
    changes_forward = True
    trains = False

    def __init__(self, file: str = "", **kwargs) -> None:
        kwargs.setdefault("phases", ["analyze"])
        super().__init__(**kwargs)
        if not self.targets and not self.types:
            raise HooktrainError(f"`{self.field('targets')}`: name the modules to patch, e.g. plugins.patch.targets=[classifier.fc2]")
        if not file or not Path(file).is_file():
            raise HooktrainError(
                f"`{self.field('file')}`: no activation file at {file!r}; give one that activation_cache wrote, "
                "e.g. <analyze run dir>/activations/test.safetensors"
            )
        try:
            self.stored = load_file(file)
        except (SafetensorError, OSError) as error:
            raise HooktrainError(f"`{self.field('file')}`: {file!r} is not a safetensors file ({error})") from None
        if "inputs_index" not in self.stored:
            raise HooktrainError(f"`{self.field('file')}`: {file!r} has no inputs_index (a training snapshot?); patch with a file analyze wrote")
        self.file = file
        index = self.stored["inputs_index"].long()
        self._row = torch.full((int(index.max()) + 1,), -1, dtype=torch.long)
        self._row[index] = torch.arange(len(index))  # sample position in the split -> row of the file

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        missing = [name for name in modules if name not in self.stored]
        if missing:
            held = sorted(key for key in self.stored if key not in ("labels", "inputs_index") and not key.endswith(".grad"))
            raise HooktrainError(f"`{self.field('targets')}`: {self.file!r} holds no activations of {missing}; it holds {held}")

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        positions = self.info.sample_index
        if positions is None:
            raise HooktrainError(f"`{self.field('phases')}`: patch needs each batch's sample positions, which python -m hooktrain analyze gives")
        if self.info.split_size is not None and self.info.split_size > len(self.stored["inputs_index"]):
            raise HooktrainError(
                f"`{self.field('file')}`: {self.file!r} holds {len(self.stored['inputs_index'])} samples, the {self.info.split} split "
                f"has {self.info.split_size}; cache the whole split (plugins.activation_cache.max_samples >= {self.info.split_size})"
            )
        positions = positions.cpu().long()
        rows = self._row[positions.clamp(max=len(self._row) - 1)]
        if (positions >= len(self._row)).any() or (rows < 0).any():
            raise HooktrainError(f"`{self.field('file')}`: {self.file!r} lacks some samples of this batch; cache the whole split")
        patched = self.stored[ctx.module_name][rows]
        if patched.shape != output.shape:
            raise HooktrainError(
                f"`{self.field('file')}`: module {ctx.module_name!r} outputs {tuple(output.shape[1:])} per sample, "
                f"the file holds {tuple(patched.shape[1:])}; patch with a file of the same model"
            )
        return patched.to(device=output.device, dtype=output.dtype)
