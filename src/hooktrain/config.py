"""The trainer schema: every Lightning Trainer argument as a config key, read from Trainer's signature.

Registered in Hydra's ConfigStore as ``trainer_schema`` (and ``fabric_schema`` for the Fabric engine);
``conf/trainer/*.yaml`` extend it, so
``trainer.X=...`` works for every argument and a misspelt one fails with the key named.
"""

import inspect
from dataclasses import field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from lightning.pytorch import Trainer

_PLAIN = (type(None), bool, int, float, str)
_OBJECTS = {"callbacks", "logger", "plugins"}  # built by hooktrain.run from their own config groups


def trainer_schema(target: str = "lightning.pytorch.Trainer") -> type:
    """A dataclass with ``_target_`` and one field per plain-valued Trainer argument, Lightning's defaults.

    The Fabric engine (``target`` hooktrain.engines.fabric.FabricTrainer) takes the same keys: a config
    moves between engines unchanged, and a Trainer setting Fabric does not run is refused by name.
    """
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    for name, parameter in inspect.signature(Trainer.__init__).parameters.items():
        if name == "self" or name in _OBJECTS or parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if isinstance(parameter.default, _PLAIN):
            fields.append((name, Any, field(default=parameter.default)))
    return make_dataclass("TrainerConfig", fields)


def register_configs() -> None:
    ConfigStore.instance().store(name="trainer_schema", node=trainer_schema())
    ConfigStore.instance().store(name="fabric_schema", node=trainer_schema("hooktrain.engines.fabric.FabricTrainer"))
