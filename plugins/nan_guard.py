"""nan_guard: stops training at the first module whose output or gradient is not finite, and names it."""

import math

import torch
from torch import Tensor, nn

from hooktrain.errors import NonFiniteError
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.stats import largest_magnitude

CHECKS = ("_output_check", "_grad_check")


class NanGuard(HookPlugin):
    """Stops training when a module's output or gradient holds NaN or inf, naming the first such module.

    Hooks: a forward hook records, per module, the sum of the smallest and largest output value, and
    an ``output_grad`` hook (a tensor hook, far cheaper than a full backward hook) that of the gradient
    at the output: one ``aminmax`` pass each, on the device, no host sync; NaN and inf carry through
    it. The host keeps the order in which modules ran. At the end of the step the values of every
    module reach the host in one go: on a CPU at once; on a GPU through a non-blocking copy read at
    a later step once it has landed, so healthy steps never wait for the GPU. The first non-finite
    output in forward order is named; if all outputs were finite, the first non-finite gradient in
    backward order (where the bad gradient entered). Logged, on logging steps: ``output_absmax`` and
    ``grad_absmax``, the largest ``|value|``.
    Under fp16 mixed precision only outputs are checked: there a GradScaler makes early steps
    overflow on purpose, then skips them and lowers its scale.

    Buffers: ``checked_steps``, the steps checked so far.

    Raises:
        NonFiniteError: ``nan_guard: at step 812, the output of module 'features.conv2' is not finite ...``.
    """

    changes_training = True
    layer_pictures = ("output_absmax", "grad_absmax")  # an exploding layer shows before it turns NaN

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._order: dict[str, list[int]] = {"output": [], "gradient": []}  # module indices, in call order
        self._pending: list[tuple[Tensor, object, dict[str, list[int]], int]] = []  # flags, CUDA event, order, step
        self._names: list[str] = []

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        state.register_buffer("checked_steps", torch.zeros((), dtype=torch.long))
        self._names = list(modules)

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output) -> None:
        if isinstance(output, Tensor) and output.numel():
            self._order["output"].append(ctx.index)
            self._record(ctx, "output", output.detach())

    def output_grad(self, ctx: HookContext, module: nn.Module, grad: Tensor) -> None:
        if self.info.active_scaler is not None:
            return  # fp16: overflowing scaled gradients are the GradScaler's business (it skips the step)
        if grad.numel():
            self._order["gradient"].append(ctx.index)
            self._record(ctx, "grad", grad)

    def _record(self, ctx: HookContext, what: str, values: Tensor) -> None:
        """``min + max`` from one ``aminmax`` pass: not finite exactly when a value is not (short of two finite values
        over 1.7e38), and summed over calls and processes, where NaN carries on (a max all-reduce may drop it).
        ``|value|``'s largest only on logging steps."""
        low, high = torch.aminmax(values)
        ctx.record(f"_{what}_check", low + high, reduce="sum")
        if self.writes_now(ctx):
            ctx.record(f"{what}_absmax", largest_magnitude(low, high), reduce="max")

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        state.checked_steps.add_(1)
        order, self._order = self._order, {"output": [], "gradient": []}
        if not stats:
            return {}
        if any(key not in stats for key in CHECKS):  # a kind not recorded (fp16 gradients, no backward): healthy
            healthy = torch.zeros_like(next(iter(stats.values())))
            stats = {key: stats.get(key, healthy) for key in CHECKS}
        checks = torch.stack([stats[key] for key in CHECKS])
        event = None
        if checks.is_cuda:  # copy without waiting; read once the copy has landed
            host = torch.empty_like(checks, device="cpu", pin_memory=True)
            host.copy_(checks, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            checks = host
        self._pending.append((checks, event, order, self.info.step))
        self._check()
        return {}

    def _check(self) -> None:
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            checks, _, order, step = self._pending.pop(0)
            bad = {kind: [not math.isfinite(value) for value in row] for kind, row in zip(("output", "gradient"), checks.tolist())}
            for what, kind in (("output", "output"), ("gradient at the output", "gradient")):
                first = next((index for index in order[kind] if bad[kind][index]), None)
                if first is not None:
                    raise NonFiniteError(
                        f"nan_guard: at step {step}, the {what} of module {self._names[first]!r} is not finite (NaN or inf); "
                        "lower the learning rate, clip gradients (plugins=[grad_clip]) or check the data"
                    )
