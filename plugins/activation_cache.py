"""activation_cache: keeps the raw outputs of chosen modules (and their gradients) in a safetensors file for offline analysis."""

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from hooktrain.errors import HooktrainError, check_positive_int
from hooktrain.plugin import HookContext, HookPlugin


class ActivationCache(HookPlugin):
    """Stores each selected module's output for up to ``max_samples`` samples, as TransformerLens' ``run_with_cache`` does.

    In ``python -m hooktrain analyze`` (its default phase) it writes
    ``<run dir>/activations/<split>.safetensors``: one key per module name, ``<module>.grad`` for the
    gradient of the loss at that output (with ``grads: true``), ``labels`` and ``inputs_index`` (each
    sample's position in the split); the first dimension of every key is the sample, in the same
    order. In training (``phases: [train]``) it snapshots the batch of every ``every_n_steps``-th
    step to ``activations/step_<n>.safetensors`` (labels, no ``inputs_index``: the order is shuffled).
    The files load with ``safetensors.torch.load_file``, without hooktrain. A shared module keeps
    its first call of each batch. Values are copied to the CPU as they come (a host sync per batch:
    this plugin is for analysis, not for every training step).

    Args:
        max_samples: samples to keep, at most.
        grads: also keep the gradient of the loss at each output (analyze then runs a backward pass).
        max_bytes: the capture is refused, with one sentence, at its first batch if it would need more.
        **kwargs: ``targets``, ``types``, ``phases``, ``every_n_steps`` of :class:`HookPlugin`.
    """

    def __init__(self, max_samples: int = 1024, grads: bool = False, max_bytes: int = 2**30, **kwargs) -> None:
        kwargs.setdefault("phases", ["analyze"])
        super().__init__(**kwargs)
        self.max_samples = check_positive_int(self.field("max_samples"), max_samples)
        self.max_bytes = check_positive_int(self.field("max_bytes"), max_bytes)
        self.grads = bool(grads)
        self._reset()

    def _reset(self) -> None:
        """An empty capture: at the start, and after each file written."""
        self._kept: dict[str, list[Tensor]] = {}  # key -> batches, on the CPU
        self._taken: dict[str, int] = {}  # module -> samples of the current batch it keeps (its gradient keeps as many)
        self._samples = 0  # samples kept so far
        self._batch: object = None  # the current batch's marker: new batch, new rows
        self._planned = 0  # bytes the capture will take, summed as modules report their first output
        self._sized: set[str] = set()  # modules whose size is counted in _planned

    def hook_kinds(self) -> list[str]:
        return ["forward", "output_grad"] if self.grads else ["forward"]

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"activation_cache keeps tensor outputs, got {type(output).__name__}")
        self._start_batch(len(output))
        name = ctx.module_name
        if name in self._taken:  # a shared module's second call in this batch
            return
        self._check_size(name, output)
        take = self._taken[name] = min(len(output), self.max_samples - self._samples)
        if take > 0:
            self._kept.setdefault(name, []).append(output[:take].detach().to("cpu", copy=True))

    def output_grad(self, ctx: HookContext, module: nn.Module, grad: Tensor) -> None:
        take = self._taken.get(ctx.module_name, 0)
        if take > 0 and len(self._kept.get(f"{ctx.module_name}.grad", [])) < len(self._kept[ctx.module_name]):
            self._kept.setdefault(f"{ctx.module_name}.grad", []).append(ctx.unscale(grad)[:take].detach().to("cpu", copy=True))

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """A training snapshot: this step's batch, written at once."""
        self._finish_batch()
        self._save(f"step_{self.info.step}")
        return {}

    def end_phase(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        self._finish_batch()
        self._save(self.info.split or self.info.phase)
        return {}

    def _start_batch(self, batch_size: int) -> None:
        """A new batch begins when the engine's batch tensors change; without them (a plain loop), once per step."""
        marker = self.info.sample_index if self.info.sample_index is not None else self.info.targets
        if (marker is None and self._taken) or (marker is not None and marker is self._batch):
            return
        self._finish_batch()
        self._batch, self._taken = marker, {}
        take = min(batch_size, self.max_samples - self._samples)
        if take > 0 and self.info.targets is not None:
            self._kept.setdefault("labels", []).append(self.info.targets[:take].detach().to("cpu", copy=True))
        if take > 0 and self.info.sample_index is not None:
            self._kept.setdefault("inputs_index", []).append(self.info.sample_index[:take].detach().to("cpu", copy=True))

    def _finish_batch(self) -> None:
        self._samples += max(self._taken.values(), default=0)

    def _check_size(self, name: str, output: Tensor) -> None:
        if name in self._sized:
            return
        self._sized.add(name)
        planned_samples = min(self.max_samples, self.info.split_size or self.max_samples)
        per_sample = output[0].numel() * output.element_size() * (2 if self.grads else 1)
        self._planned += per_sample * planned_samples
        if self._planned > self.max_bytes:
            raise HooktrainError(
                f"`{self.field('max_bytes')}`: keeping {planned_samples} samples of the selected modules needs at least "
                f"{self._planned:,} bytes (module {name!r}: {per_sample:,} per sample), over max_bytes={self.max_bytes:,}; "
                "lower max_samples, select fewer modules with targets, or raise max_bytes"
            )

    def _save(self, stem: str) -> None:
        if self.info.output_dir is None:
            raise HooktrainError(f"`{self.field('phases')}`: activation_cache writes into the run directory, and this run has none")
        tensors = {key: torch.cat(parts).contiguous() for key, parts in self._kept.items() if parts}
        if tensors:
            path = self.info.output_dir / "activations" / f"{stem}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path), metadata={"plugin": self.name, "phase": self.info.phase, "step": str(self.info.step)})
        self._reset()
