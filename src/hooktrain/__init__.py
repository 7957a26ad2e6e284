"""hooktrain: see and steer what happens inside a PyTorch model while it trains, through module hooks."""

from hooktrain.config import register_configs
from hooktrain.errors import HooktrainError, PluginHookError
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.registry import check_plugin_overrides
from hooktrain.run import run, train
from hooktrain.runner import PluginRunner

register_configs()

__all__ = ["HookContext", "HookPlugin", "HooktrainError", "PluginHookError", "PluginRunner", "check_plugin_overrides", "run", "train"]
