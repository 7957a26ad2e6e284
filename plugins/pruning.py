"""pruning: gradual magnitude pruning on Zhu & Gupta's cubic schedule, built on torch.nn.utils.prune."""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn

from hooktrain.errors import HooktrainError, check_in_range, check_positive_int
from hooktrain.plugin import HookPlugin

METHODS = ("l1_unstructured", "random_unstructured", "ln_structured", "global_unstructured")


def cubic_sparsity(step: int, amount: float, start: float, end: float) -> float:
    """Zhu & Gupta (2017): ``amount * (1 - (1 - progress)^3)``, progress going 0 to 1 from ``start`` to ``end``."""
    progress = min(max((step - start) / max(end - start, 1e-12), 0.0), 1.0)
    return amount * (1.0 - (1.0 - progress) ** 3)


def lowest(scores: Tensor, count: int) -> Tensor:
    """A mask (1 = keep) that drops the ``count`` lowest scores (and any score tied with the last of them).

    A threshold from a selection (:func:`kth_smallest`) rather than ``topk``'s indices. Ties with the
    threshold: float weights have none in practice; pruned weights all score 0 (or -1), and are masked already.
    """
    if count <= 0:
        return torch.ones_like(scores)
    return (scores > kth_smallest(scores, min(count, scores.numel()))).to(scores.dtype)


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest of ``values`` (``k`` from 1), a 0-dim tensor on their device; no host sync on an accelerator.

    On the CPU NumPy's sort: for LeNet's 61,706 weights 130-150 us, and 79-89 us once half of them are pruned
    to 0, where ``torch.kthvalue`` takes 250-570 us, ``topk`` 2.8 ms, and ``np.partition``, 45-53 us on distinct
    values, slows down on the ties that pruned weights make (470-610 us with half at 0; 19 ms for 1M weights
    with 90% at 0; NumPy 2.4, 2026-11-24).
    """
    flat = values.detach().flatten()
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(flat.numpy())[k - 1 : k]).reshape(())
    return torch.kthvalue(flat, k).values


def mask_in_place(module: nn.Module, name: str) -> None:
    """``torch.nn.utils.prune``'s reparametrization of ``module.<name>`` (a ``<name>_orig`` parameter, a ``<name>_mask``
    buffer) without its forward pre-hook: ``module.<name>`` is ``<name>_orig`` itself, multiplied by the mask in place.

    Whoever then changes the weights keeps them masked (:class:`Pruning` after each optimizer step; loading a state
    dict does it itself). A module pruned before, by torch or by an earlier setup, keeps its mask.
    """
    if not hasattr(module, f"{name}_mask"):
        prune.identity(module, name)
    for key, hook in list(module._forward_pre_hooks.items()):  # found as torch.nn.utils.prune.remove finds it
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            del module._forward_pre_hooks[key]
    module.__dict__[name] = getattr(module, f"{name}_orig")  # not setattr: nn.Module would register the parameter a second time
    mask_after_load = MaskAfterLoad(name)
    if not any(isinstance(hook, MaskAfterLoad) and hook.name == name for hook in module._load_state_dict_post_hooks.values()):
        module.register_load_state_dict_post_hook(mask_after_load)
    mask_after_load(module, None)  # what a load does: <name>_orig times the mask


class MaskAfterLoad:
    """A load-state-dict post-hook: the loaded ``<name>_orig`` times the loaded mask (a state dict saved mid-step, or by
    torch's own pruning, holds values where the mask is 0). A class, not a closure, so the model still pickles."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, incompatible_keys: object) -> None:
        with torch.no_grad():
            getattr(module, f"{self.name}_orig").mul_(getattr(module, f"{self.name}_mask"))


class Pruning(HookPlugin):
    """Prunes the selected layers' weights gradually to ``amount`` sparsity; masks are buffers in the checkpoint.

    At setup each selected layer gets ``torch.nn.utils.prune``'s reparametrization (a ``weight_orig``
    parameter and a ``weight_mask`` buffer, so checkpoints keep torch's keys), but not its forward
    pre-hook, which multiplies the two at every forward and again in backward (a LeNet step on this
    CPU 0.33 ms or 8% slower in a plain loop, 2026-11-24): ``module.weight`` is ``weight_orig`` itself,
    kept at zero where masked. On every
    training step the gradients of pruned weights are zeroed before the optimizer step and the
    pruned weights after it (one ``torch._foreach_mul_`` each), so training sees what torch's hook
    gives: the same forward, the same gradients; a loaded state dict is masked as it loads.
    On the steps of ``every_n_steps`` the target sparsity follows the cubic schedule of Zhu & Gupta
    (2017) from ``start`` to ``end`` and the masks are recomputed in place from the masked weights,
    so a pruned weight stays pruned; where the target stays put (before ``start``, after ``end``)
    they would not change, and are not recomputed. The exported ``model.pt`` has pruning made
    permanent (``export``): plain ``weight`` tensors with zeros, no ``_orig``/``_mask`` keys.

    Methods: ``l1_unstructured`` (smallest \\|w\\| per layer, ``prune.L1Unstructured``),
    ``random_unstructured`` (random weights per layer), ``ln_structured`` (whole slices along
    ``dim`` by Ln norm, ``prune.LnStructured``), ``global_unstructured`` (smallest \\|w\\| across all
    selected layers together, so large layers give up more).

    Logged: ``sparsity`` per layer; ``overall_sparsity`` and ``target_sparsity`` for the plugin.
    Buffers: ``target_sparsity`` (the schedule's current value).

    Args:
        amount: final sparsity, in [0, 1).
        method: one of ``METHODS``.
        start: step where pruning starts; a float in [0, 1] is a fraction of the fit's steps.
        end: step where ``amount`` is reached; a float in [0, 1] is a fraction of the fit's steps.
        parameter: the parameter of each layer to prune.
        n: the norm of ``ln_structured``.
        dim: the dimension whose slices ``ln_structured`` prunes (0: output channels).
        **kwargs: ``every_n_steps`` (how often masks are updated), ``targets``, ``types``, ``log_every_n_steps``.
    """

    changes_training = True
    changes_forward = True  # the masked weights, in every phase; export bakes them in
    acts_when_idle = True  # it keeps pruned weights at zero on every step, whatever every_n_steps
    layer_pictures = ("sparsity",)

    def __init__(
        self,
        amount: float = 0.5,
        method: str = "global_unstructured",
        start: float = 0.1,
        end: float = 0.7,
        parameter: str = "weight",
        n: int = 2,
        dim: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.amount = check_in_range(self.field("amount"), amount, 0.0, 1.0)
        if method not in METHODS:
            raise HooktrainError(f"`{self.field('method')}` must be one of {list(METHODS)}, got {method!r}")
        self.start, self.end = (self._check_when(key, value) for key, value in (("start", start), ("end", end)))
        self.method, self.parameter, self.n, self.dim = method, parameter, check_positive_int(self.field("n"), n), dim
        self._modules: dict[str, nn.Module] = {}
        self._applied_target: float | None = None  # the target the masks hold, once this process has set them

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            weight = getattr(module, self.parameter, None)
            if not isinstance(weight, Tensor):
                raise HooktrainError(f"`{self.field('parameter')}`: module {name!r} ({type(module).__name__}) has no tensor {self.parameter!r}")
            if self.method == "ln_structured" and not -weight.dim() <= self.dim < weight.dim():
                raise HooktrainError(
                    f"`{self.field('dim')}`: module {name!r} has a {weight.dim()}-dimensional {self.parameter} {tuple(weight.shape)}, "
                    f"so dim must be in [{-weight.dim()}, {weight.dim() - 1}], got {self.dim}"
                )
            mask_in_place(module, self.parameter)
        self._modules, self._applied_target = modules, None
        state.register_buffer("target_sparsity", torch.zeros(()))

    def is_active(self, step: int, phase: str = "train") -> bool:
        """Every step of the phases it runs in: pruned weights go back to zero after each optimizer step."""
        return phase in self.phases

    def gradients_ready(self) -> None:
        pairs = [(weight.grad, mask) for weight, mask in self._weights_and_masks() if weight.grad is not None]
        if pairs:  # what torch's hook gives weight_orig: the gradient times the mask
            torch._foreach_mul_([grad for grad, _ in pairs], [mask for _, mask in pairs])

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        step = self.info.step
        weights, masks = zip(*self._weights_and_masks())
        with torch.no_grad():
            torch._foreach_mul_(weights, masks)  # the optimizer moved pruned weights (momentum, weight decay): back to zero
            target = self._target(step) if step % self.every_n_steps == 0 else self._applied_target
            if target != self._applied_target:  # at a constant target (before `start`, after `end`) the masks are a fixed point
                state.target_sparsity.fill_(target)
                torch._foreach_mul_(masks, self._new_masks(target, weights, masks))  # a pruned weight stays pruned, whatever the method
                torch._foreach_mul_(weights, masks)
                self._applied_target = target
        if not self.is_logging(step):
            return {}
        sparsity = torch.stack([1 - mask.mean(dtype=torch.float32) for mask in masks])  # counted in float32: a half mask's sum overflows
        overall = 1 - sum(mask.sum(dtype=torch.float32) for mask in masks) / sum(mask.numel() for mask in masks)
        return {"sparsity": sparsity, "overall_sparsity": overall, "target_sparsity": state.target_sparsity}

    def export(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Pruning made permanent, on the state dict alone (the trained model keeps its masks, a resumed run its
        schedule): ``<layer>.weight`` = ``weight_orig * weight_mask``, no ``_orig``/``_mask`` keys."""
        state = dict(state_dict)
        for name in self._modules:
            key = f"{name}.{self.parameter}"
            state[key] = state.pop(f"{key}_orig") * state.pop(f"{key}_mask")
        return state

    def _new_masks(self, target: float, weights: Sequence[Tensor], old: Sequence[Tensor]) -> list[Tensor]:
        """Masks for ``target`` from the weights (zero where pruned) and their current masks; ``update`` keeps pruned what ``old`` pruned."""
        if self.method == "global_unstructured":  # a few calls for all layers: on the CPU each costs more than its arithmetic
            scores = torch.cat([magnitude.flatten() for magnitude in torch._foreach_abs(weights)])
            keep = lowest(scores, round(target * scores.numel()))
            return [part.view_as(mask) for part, mask in zip(keep.split([mask.numel() for mask in old]), old)]
        if self.method == "l1_unstructured":
            return [prune.L1Unstructured(target).compute_mask(weight, mask) for weight, mask in zip(weights, old)]
        if self.method == "ln_structured":
            return [prune.LnStructured(target, n=self.n, dim=self.dim).compute_mask(weight, mask) for weight, mask in zip(weights, old)]
        # random_unstructured: random among the weights still kept, so the sparsity reaches the target exactly
        return [lowest(torch.rand_like(weight).masked_fill(mask == 0, -1.0), round(target * weight.numel())) for weight, mask in zip(weights, old)]

    def _weights_and_masks(self) -> list[tuple[nn.Parameter, Tensor]]:
        """Looked up on each step: moving a model to a device replaces its buffers."""
        return [(getattr(module, f"{self.parameter}_orig"), getattr(module, f"{self.parameter}_mask")) for module in self._modules.values()]

    def _target(self, step: int) -> float:
        return cubic_sparsity(step + 1, self.amount, self._resolve("start", self.start), self._resolve("end", self.end))

    def _resolve(self, key: str, when: float | int) -> float:
        if isinstance(when, int):
            return when
        if self.info.total_steps == float("inf"):
            raise HooktrainError(f"`{self.field(key)}` is a fraction of the fit's steps, but the fit has no step limit; give a step number")
        return when * self.info.total_steps

    def _check_when(self, key: str, value: object) -> float | int:
        if isinstance(value, float) and 0.0 <= value <= 1.0 or isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise HooktrainError(f"`{self.field(key)}` must be a step (an integer >= 0) or a fraction of the fit's steps in [0.0, 1.0], got {value!r}")
