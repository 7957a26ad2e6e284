"""module_timer: forward and backward wall time per module, so a user sees where a step's time goes."""

import time

import torch
from torch import nn

from hooktrain.plugin import HookContext, HookPlugin


class ModuleTimer(HookPlugin):
    """Logs the forward and backward wall time of each selected module, in milliseconds.

    Hooks: forward pre/post hooks and full backward pre/post hooks take ``time.perf_counter()``.
    On a GPU, kernels run asynchronously: without ``synchronize`` the times are launch times;
    with it, each hook waits for the GPU (exact times, slower active steps).

    Buffers: ``total_forward_ms`` and ``total_backward_ms``, per module, summed over active steps.

    Args:
        synchronize: call ``torch.cuda.synchronize()`` before reading the clock (CUDA only).
        **kwargs: ``every_n_steps``, ``targets``, ``types``, ``log_every_n_steps`` of :class:`HookPlugin`.
    """

    deterministic_state = False  # wall-clock times
    layer_pictures = ("forward_ms", "backward_ms")

    def __init__(self, synchronize: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.synchronize = bool(synchronize)
        self._started: dict[tuple[str, int], float] = {}

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        state.register_buffer("total_forward_ms", torch.zeros(len(modules), dtype=torch.float64))
        state.register_buffer("total_backward_ms", torch.zeros(len(modules), dtype=torch.float64))

    def forward_pre(self, ctx: HookContext, module: nn.Module, args: tuple) -> None:
        self._started[("forward", ctx.index)] = self._now(module)

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output) -> None:
        self._stop(ctx, module, "forward")

    def backward_pre(self, ctx: HookContext, module: nn.Module, grad_output: tuple) -> None:
        self._started[("backward", ctx.index)] = self._now(module)

    def backward(self, ctx: HookContext, module: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
        self._stop(ctx, module, "backward")

    def update(self, state: nn.Module, stats: dict) -> dict:
        for phase in ("forward", "backward"):
            if f"{phase}_ms" in stats:
                total = state.get_buffer(f"total_{phase}_ms")  # on the model's device; the times come from the host
                total.add_(stats[f"{phase}_ms"].nan_to_num(0.0).to(total.device, torch.float64, non_blocking=True))
        return {}

    def _stop(self, ctx: HookContext, module: nn.Module, phase: str) -> None:
        started = self._started.pop((phase, ctx.index), None)
        if started is not None:
            ctx.record(f"{phase}_ms", torch.tensor(1000 * (self._now(module) - started)))

    def _now(self, module: nn.Module) -> float:
        if self.synchronize and torch.cuda.is_available():
            param = next(module.parameters(), None)
            if param is not None and param.is_cuda:
                torch.cuda.synchronize(param.device)
        return time.perf_counter()
