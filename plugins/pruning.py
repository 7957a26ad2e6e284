"""pruning: gradual magnitude pruning on Zhu & Gupta's cubic schedule, built on torch.nn.utils.prune."""

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

    On the CPU NumPy's introselect (``np.partition``) takes 45 us for LeNet's 61,706 weights, where
    ``torch.kthvalue`` takes 650 us and ``topk`` 2.8 ms (2026-11-24): the most of a mask update.
    """
    flat = values.detach().flatten()
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.partition(flat.numpy(), k - 1)[k - 1 : k]).reshape(())
    return torch.kthvalue(flat, k).values


class Pruning(HookPlugin):
    """Prunes the selected layers' weights gradually to ``amount`` sparsity; masks are buffers in the checkpoint.

    At setup each selected layer gets ``torch.nn.utils.prune.identity``: PyTorch's own forward
    pre-hook multiplies ``weight_orig`` by the ``weight_mask`` buffer at every forward (training,
    validation and test alike), so a checkpoint holds both and a resumed run continues the schedule.
    On active steps the target sparsity follows the cubic schedule of Zhu & Gupta (2017) from
    ``start`` to ``end`` and the masks are recomputed in place from the masked weights, so a pruned
    weight stays pruned; where the target stays put (before ``start``, after ``end``) they would not
    change, and are not recomputed. The exported ``model.pt`` has pruning made permanent (``export``):
    plain ``weight`` tensors with zeros, no ``_orig``/``_mask`` keys.

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
    changes_forward = True  # through torch's own pruning hook, in every phase; export bakes it into the weights
    acts_when_idle = True  # torch's hook applies the masks at every forward
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
            if not hasattr(module, f"{self.parameter}_mask"):
                prune.identity(module, self.parameter)
            self._refresh(module)
        self._modules, self._applied_target = modules, None
        state.register_buffer("target_sparsity", torch.zeros(()))

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        steps_done = self.info.step + 1
        target = cubic_sparsity(steps_done, self.amount, self._resolve("start", self.start), self._resolve("end", self.end))
        if target != self._applied_target:  # at a constant target (before `start`, after `end`) the masks are a fixed point
            state.target_sparsity.fill_(target)
            with torch.no_grad():
                for module, mask in zip(self._modules.values(), self._new_masks(target)):
                    getattr(module, f"{self.parameter}_mask").copy_(mask)
                    self._refresh(module)
            self._applied_target = target
        if not self.is_logging(self.info.step):
            return {}
        masks = [getattr(module, f"{self.parameter}_mask") for module in self._modules.values()]
        sparsity = torch.stack([1 - mask.float().mean() for mask in masks])
        overall = 1 - sum(mask.sum() for mask in masks) / sum(mask.numel() for mask in masks)
        return {"sparsity": sparsity, "overall_sparsity": overall, "target_sparsity": state.target_sparsity}

    def export(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Pruning made permanent, on the state dict alone (the trained model keeps its masks, a resumed run its
        schedule): ``<layer>.weight`` = ``weight_orig * weight_mask``, no ``_orig``/``_mask`` keys."""
        state = dict(state_dict)
        for name in self._modules:
            key = f"{name}.{self.parameter}"
            state[key] = state.pop(f"{key}_orig") * state.pop(f"{key}_mask")
        return state

    def _new_masks(self, target: float) -> list[Tensor]:
        weights = [self._masked_weight(module) for module in self._modules.values()]
        old = [getattr(module, f"{self.parameter}_mask") for module in self._modules.values()]
        if self.method == "global_unstructured":
            scores = torch.cat([weight.abs().flatten() for weight in weights])
            keep = lowest(scores, round(target * scores.numel()))
            return [part.view_as(weight) * mask for part, weight, mask in zip(keep.split([w.numel() for w in weights]), weights, old)]
        if self.method == "l1_unstructured":
            return [prune.L1Unstructured(target).compute_mask(weight, mask) for weight, mask in zip(weights, old)]
        if self.method == "ln_structured":
            return [prune.LnStructured(target, n=self.n, dim=self.dim).compute_mask(weight, mask) for weight, mask in zip(weights, old)]
        # random_unstructured: random among the weights still kept, so the sparsity reaches the target exactly
        return [lowest(torch.rand_like(weight).masked_fill(mask == 0, -1.0), round(target * weight.numel())) for weight, mask in zip(weights, old)]

    def _refresh(self, module: nn.Module) -> None:
        """Recomputes ``module.<parameter>`` without a graph, so the model can be deep-copied between steps.

        PyTorch's pruning hook recomputes it at every forward; until then it would be a non-leaf
        tensor, which ``copy.deepcopy`` refuses.
        """
        with torch.no_grad():
            setattr(module, self.parameter, self._masked_weight(module))

    def _masked_weight(self, module: nn.Module) -> Tensor:
        return getattr(module, f"{self.parameter}_orig").detach() * getattr(module, f"{self.parameter}_mask")

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
