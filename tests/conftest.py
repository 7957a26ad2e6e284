"""Shared fixtures: the real config, composed once per test and shrunk to a few CPU steps in tmp_path."""

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import hooktrain  # noqa: F401  registers the trainer schema
from hooktrain.registry import training_plugins
from hooktrain.testing import plugin_selection

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = training_plugins(ROOT / "conf")  # every plugin of conf/plugins that trains: a file dropped there is in every test below


def every_plugin(every_n_steps: int = 1, log_every_n_steps: int = 2) -> list[str]:
    """Overrides that run every discovered plugin at this cadence, with the settings each needs (``example_settings``)."""
    return plugin_selection(PLUGINS, ROOT / "conf", every_n_steps, log_every_n_steps)[2]

# Runs on a CUDA device where one is (the device tool lends one to some sessions); CI has none.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ON_CPU_AND_CUDA = [  # the config's CPU, and the same test on a GPU at full and at mixed precision
    pytest.param((), id="cpu"),
    pytest.param(("trainer.accelerator=gpu", "trainer.precision=32-true"), marks=needs_cuda, id="cuda-32-true"),
    pytest.param(("trainer.accelerator=gpu", "trainer.precision=bf16-mixed"), marks=needs_cuda, id="cuda-bf16-mixed"),
]

FAST = [
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("model=mlp", ...)``: the composed train config, fast, writing under tmp_path."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("train", overrides=[*(FAST if fast else []), f"paths.output_dir={tmp_path}", *overrides])

    return make


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300, env: dict[str, str] | None = None):
    """Runs ``python <args>`` in a subprocess the way a user would, returning the CompletedProcess; ``env`` adds variables."""
    import os
    import subprocess

    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment)
