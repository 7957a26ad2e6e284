"""hooktrain: see and steer what happens inside a PyTorch model while it trains, through module hooks."""

from hooktrain.cli import check_command_line
from hooktrain.config import register_configs
from hooktrain.engines.lightning import HookCallback
from hooktrain.errors import HooktrainError, PluginHookError, check_in_range, check_positive, check_positive_int
from hooktrain.plugin import HookContext, HookPlugin
from hooktrain.registry import check_plugin_overrides
from hooktrain.run import run, train
from hooktrain.session import HookSession
from hooktrain.writers import CSVWriter, TensorBoardWriter, Writer

register_configs()

__all__ = [
    "CSVWriter", "HookCallback", "HookContext", "HookPlugin", "HookSession", "HooktrainError", "PluginHookError",
    "TensorBoardWriter", "Writer", "check_command_line", "check_in_range", "check_plugin_overrides", "check_positive", "check_positive_int", "run", "train",
]
