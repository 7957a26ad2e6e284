"""nan_guard: stops training at the first module whose output or gradient is not finite, and names it."""

import torch
from torch import Tensor, nn

from hooktrain.errors import NonFiniteError
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.stats import absmax


class NanGuard(HookPlugin):
    """Stops training when a module's output or gradient holds NaN or inf, naming the first such module.

    Hooks: a forward hook records, per module, the largest ``|output|``, and an ``output_grad``
    hook (a tensor hook, far cheaper than a full backward hook) the largest ``|gradient|`` at the
    output: one reduction each, on the device, no host sync; NaN and inf carry through it. The
    host keeps the order in which modules ran. At the end of the step the values are checked in
    one go and reach the host: on a CPU at once; on a GPU through a non-blocking copy read at a
    later step once it has landed, so healthy steps never wait for the GPU. The first non-finite
    output in forward order is named; if all outputs were finite, the first non-finite gradient in
    backward order (where the bad gradient entered). Logged: ``output_absmax`` and ``grad_absmax``.
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
            ctx.record("output_absmax", absmax(output))

    def output_grad(self, ctx: HookContext, module: nn.Module, grad: Tensor) -> None:
        if self.info.active_scaler is not None:
            return  # fp16: overflowing scaled gradients are the GradScaler's business (it skips the step)
        if grad.numel():
            self._order["gradient"].append(ctx.index)
            ctx.record("grad_absmax", absmax(grad))

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        state.checked_steps.add_(1)
        order, self._order = self._order, {"output": [], "gradient": []}
        if not stats:
            return {}
        healthy = torch.zeros_like(next(iter(stats.values())))
        flags = ~torch.isfinite(torch.stack([stats.get(key, healthy) for key in ("output_absmax", "grad_absmax")]))
        event = None
        if flags.is_cuda:  # copy without waiting; read once the copy has landed
            host = torch.empty_like(flags, device="cpu", pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flags = host
        self._pending.append((flags, event, order, self.info.step))
        self._check()
        return {}

    def _check(self) -> None:
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            flags, _, order, step = self._pending.pop(0)
            bad = flags.tolist()
            for row, (what, kind) in enumerate((("output", "output"), ("gradient at the output", "gradient"))):
                first = next((index for index in order[kind] if bad[row][index]), None)
                if first is not None:
                    raise NonFiniteError(
                        f"nan_guard: at step {step}, the {what} of module {self._names[first]!r} is not finite (NaN or inf); "
                        "lower the learning rate, clip gradients (plugins=[grad_clip]) or check the data"
                    )
