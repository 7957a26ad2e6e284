"""Initialization from config: ``init`` rules, each a torch.nn.init scheme for the modules it selects by glob or type.

    init:
      - {types: [Linear], weight: xavier_uniform, bias: zeros}
      - {targets: ["features.*"], weight: kaiming_normal, args: {nonlinearity: relu}}

Rules apply in order through ``Module.apply`` (a later rule wins where two select the same module), before
plugins attach and before a checkpoint is loaded (which replaces the values it holds).
"""

import inspect
from collections.abc import Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from hooktrain.errors import HooktrainError
from hooktrain.select import select_from

SCHEMES = {
    name: getattr(nn.init, f"{name}_")
    for name in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "normal", "uniform",
                 "trunc_normal", "constant", "zeros", "ones")
}
RULE_KEYS = ("targets", "types", "weight", "args", "bias")


def initialize(model: nn.Module, rules: Sequence[Mapping] | None) -> None:
    """Applies each rule of ``init`` to the modules it selects (``targets`` globs, ``types`` class names; neither:
    every layer with parameters). ``weight`` and ``bias`` name schemes (``nn.init.<name>_``); ``args`` go to ``weight``'s.

    Raises:
        HooktrainError: an unknown key, scheme or argument, a rule selecting nothing; named as ``init[i].key``.
    """
    if isinstance(rules, (DictConfig, ListConfig)):
        rules = OmegaConf.to_container(rules, resolve=True)
    if rules is None:
        return
    if not isinstance(rules, list):
        raise HooktrainError(f"`init` must be a list of rules such as {{types: [Linear], weight: xavier_uniform}}, got {rules!r}")
    for index, rule in enumerate(rules):
        field = f"init[{index}]"
        weight, bias, args = _check_rule(rule, field)
        selected = {id(module) for _, module in select_from(model, rule, field)}

        def apply(module: nn.Module) -> None:
            if id(module) not in selected:
                return
            if weight and isinstance(getattr(module, "weight", None), nn.Parameter):
                _call(weight, module.weight, args, f"{field}.weight")
            if bias and isinstance(getattr(module, "bias", None), nn.Parameter):
                _call(bias, module.bias, {}, f"{field}.bias")

        model.apply(apply)


def _check_rule(rule: object, field: str) -> tuple[str | None, str | None, dict]:
    if not isinstance(rule, dict):
        raise HooktrainError(f"`{field}` must be a mapping such as {{types: [Linear], weight: xavier_uniform}}, got {rule!r}")
    unknown = [key for key in rule if key not in RULE_KEYS]
    if unknown:
        raise HooktrainError(f"`{field}.{unknown[0]}` is not a key of an init rule; its keys are {', '.join(RULE_KEYS)}")
    weight, bias, args = rule.get("weight"), rule.get("bias"), rule.get("args") or {}
    if not weight and not bias:
        raise HooktrainError(f"`{field}` sets neither `weight` nor `bias`; name a scheme: {', '.join(SCHEMES)}")
    for key, scheme in (("weight", weight), ("bias", bias)):
        if scheme is not None and scheme not in SCHEMES:
            raise HooktrainError(f"`{field}.{key}`: there is no scheme {scheme!r}; choose one of {', '.join(SCHEMES)} (torch.nn.init)")
    if args and not weight:
        raise HooktrainError(f"`{field}.args` are the `weight` scheme's arguments; set `{field}.weight`")
    if not isinstance(args, dict):
        raise HooktrainError(f"`{field}.args` must be a mapping such as {{nonlinearity: relu}}, got {args!r}")
    if weight:
        accepted = [name for name in inspect.signature(SCHEMES[weight]).parameters if name not in ("tensor", "generator")]
        for key in args:
            if key not in accepted:
                raise HooktrainError(f"`{field}.args.{key}` is not an argument of nn.init.{weight}_; it takes {', '.join(accepted) or 'none'}")
    return weight, bias, args


def _call(scheme: str, tensor: nn.Parameter, args: dict, field: str) -> None:
    try:
        SCHEMES[scheme](tensor, **args)
    except (ValueError, TypeError) as error:  # e.g. xavier on a 1-d tensor, an unknown nonlinearity
        raise HooktrainError(f"`{field}`: nn.init.{scheme}_ refused a tensor of shape {tuple(tensor.shape)}: {error}") from None
