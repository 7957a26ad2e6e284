"""nan_guard: stops training at the first module whose output or gradient is not finite, and names it."""

import logging
import math

import torch
from torch import Tensor, nn

from hooktrain.errors import NonFiniteError
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.stats import absmax

log = logging.getLogger(__name__)
SUMMED_AS_IS = (torch.float32, torch.float64)  # other outputs are summed in float32 or wider (a call less for these)


class NanGuard(HookPlugin):
    """Stops training when a module's output or parameter gradient holds NaN or inf, naming the first such module.

    Outputs: a forward hook records, per module, the sum of its output (in float32 or wider): NaN and inf carry
    through a sum, so it is not finite exactly when a value is not (short of finite values summing past 3.4e38,
    about 1e33 each in a conv's output: a run that has diverged anyway). One reduction per call, on the device.
    Gradients: once they are final, one ``torch._foreach_norm`` over the parameter gradients of every selected
    module (a norm past 3.4e38 counts, as for ``clip_grad_norm_(error_if_nonfinite=True)``). No hook in the
    backward: autograd's Python hooks cost more than the check, and gradients are alike on every process.
    Selected modules without parameters (``types: [ReLU]``) have their outputs checked only.
    The host keeps the order in which modules ran. At the end of the step the values reach the host in one
    go: on a CPU at once; on a GPU through a non-blocking copy read at a later step once it has landed, so
    healthy steps never wait for the GPU. The first non-finite output in forward order is named; if all
    outputs were finite, the first module with a non-finite parameter gradient in backward order (the
    reverse of forward order: where the bad gradient entered). Logged, on logging steps: ``output_absmax``
    and ``grad_absmax``, the largest ``|value|`` of the output and of the parameters' gradients.
    Under fp16 mixed precision only outputs are checked: there a GradScaler makes early steps
    overflow on purpose, then skips them and lowers its scale. In the evaluation phases it is given
    (``phases: [train, validate]``) the outputs of the whole phase are checked when it ends.

    Buffers: ``checked_steps``, the steps checked so far.

    Raises:
        NonFiniteError: ``nan_guard: at step 812, the output of module 'features.conv2' is not finite ...``.
    """

    changes_training = True
    layer_pictures = ("output_absmax", "grad_absmax")  # an exploding layer shows before it turns NaN

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._ran: list[int] = []  # modules whose output was checked, in call order
        self._grads: tuple[Tensor, list[int]] | None = None  # this step's gradient norms, and the module of each
        self._grad_absmax: Tensor | None = None  # on logging steps
        self._pending: list[tuple[Tensor, object, list[int], list[int], int]] = []  # checks, CUDA event, ran, gradients' modules, step
        self._names: list[str] = []
        self._parameters: list[list[nn.Parameter]] = []  # per module: the same objects for the whole fit (pruning re-registers them)

    def setup(self, state: nn.Module, modules: dict[str, nn.Module]) -> None:
        state.register_buffer("checked_steps", torch.zeros((), dtype=torch.long))
        self._names = list(modules)
        self._parameters = [list(module.parameters()) for module in modules.values()]
        without = [name for name, params in zip(self._names, self._parameters) if not params]
        if without:
            log.warning("nan_guard checks the outputs of %s, modules without parameters, but not their gradients", without)

    def forward(self, ctx: HookContext, module: nn.Module, args: tuple, output) -> None:
        if isinstance(output, Tensor) and output.numel():
            output = output.detach()
            self._ran.append(ctx.index)
            wider = None if output.dtype in SUMMED_AS_IS else torch.promote_types(output.dtype, torch.float32)
            ctx.record("_output_check", output.sum(dtype=wider), reduce="sum")
            if self.writes_now(ctx):
                ctx.record("output_absmax", absmax(output), reduce="max")

    def gradients_ready(self) -> None:
        if self.info.active_scaler is not None:
            return  # fp16: overflowing scaled gradients are the GradScaler's business (it skips the step)
        owned = [(index, param.grad) for index, params in enumerate(self._parameters) for param in params if param.grad is not None]
        if not owned:
            return
        owners, grads = [index for index, _ in owned], [grad for _, grad in owned]
        self._grads = torch.stack(torch._foreach_norm(grads)), owners
        if self.is_logging(self.info.step):  # per module, the largest |gradient| of its parameters (NaN: none)
            by_module: dict[int, list[Tensor]] = {}
            for index, grad in owned:
                by_module.setdefault(index, []).append(absmax(grad))
            none = torch.full((), float("nan"), device=grads[0].device)
            self._grad_absmax = torch.stack([torch.stack(by_module[index]).max() if index in by_module else none for index in range(len(self._names))])

    def update(self, state: nn.Module, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        state.checked_steps.add_(1)
        ran, self._ran = self._ran, []
        grads, self._grads = self._grads, None
        logged = {"grad_absmax": self._grad_absmax} if self._grad_absmax is not None else {}
        self._grad_absmax = None
        outputs = stats.get("_output_check")  # (num_modules,), NaN where a module recorded nothing: only `ran` is read
        parts = ([] if outputs is None else [outputs]) + ([] if grads is None else [grads[0]])
        if not parts:
            return logged
        checks = torch.cat(parts) if len(parts) > 1 else parts[0]
        event = None
        if checks.is_cuda:  # copy without waiting; read once the copy has landed
            host = torch.empty_like(checks, device="cpu", pin_memory=True)
            host.copy_(checks, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            checks = host
        self._pending.append((checks, event, ran, [] if grads is None else grads[1], self.info.step))
        self._check()
        return logged

    def end_phase(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        ran, self._ran = self._ran, []
        outputs = stats.get("_output_check")  # summed over the phase's batches: not finite if any value was not
        if outputs is not None:
            first = first_not_finite(ran, outputs.tolist())  # once a phase: no step waits for it
            if first is not None:
                raise NonFiniteError(
                    f"nan_guard: in the {self.info.phase} phase after step {self.info.step}, the output of module {self._names[first]!r} "
                    f"is not finite (NaN or inf); check the {self.info.phase} data, or the weights trained so far"
                )
        return {}

    def _check(self) -> None:
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            checks, _, ran, owners, step = self._pending.pop(0)
            values = checks.tolist()
            outputs, gradients = values[: len(values) - len(owners)], values[len(values) - len(owners) :]
            bad_output = first_not_finite(ran, outputs) if outputs else None
            bad_grads = {owner for owner, value in zip(owners, gradients) if not math.isfinite(value)}
            bad_grad = next(iter(backward_order(ran, sorted(bad_grads))), None)
            for what, first in (("output", bad_output), ("parameter gradient", bad_grad)):
                if first is not None:
                    raise NonFiniteError(
                        f"nan_guard: at step {step}, the {what} of module {self._names[first]!r} is not finite (NaN or inf); "
                        "lower the learning rate, clip gradients (plugins=[grad_clip]) or check the data"
                    )


def first_not_finite(order: list[int], values: list[float]) -> int | None:
    """The first module of ``order`` (indices into ``values``) whose value is NaN or inf."""
    return next((index for index in order if not math.isfinite(values[index])), None)


def backward_order(forward: list[int], graded: list[int]) -> list[int]:
    """The modules of ``graded`` in the order backward reached them: the reverse of their first calls in ``forward``
    (those that never returned a tensor last)."""
    ran = list(dict.fromkeys(forward))[::-1]
    return [index for index in ran if index in graded] + [index for index in graded if index not in ran]
