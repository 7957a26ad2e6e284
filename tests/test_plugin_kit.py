"""hooktrain.testing over every plugin of conf/plugins: a file dropped there gets every generic check."""

import shutil

import pytest
import torch

from conftest import PLUGINS, ROOT
from hooktrain import HookPlugin
from hooktrain import testing

CHECKS = ["check_hooks_removed", "check_state_round_trip", "check_exact_resume", "check_no_host_sync"]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", PLUGINS)
def test_every_plugin_passes_the_kit(name, check, tmp_path):
    getattr(testing, check)(name, tmp_path, ROOT / "conf")


@pytest.mark.slow
def test_every_plugin_leaves_the_same_buffers_on_both_ranks_of_a_ddp_run(tmp_path):
    testing.check_ranks_agree(PLUGINS, tmp_path, ROOT / "conf", ["plugins.pruning.start=0", "plugins.pruning.end=4"])


class ReadsOnTheHost(HookPlugin):
    """A plugin that breaks the no-host-read rule in its forward hook (test only)."""

    def forward(self, ctx, module, args, output):
        ctx.record("mean", torch.tensor(output.mean().item()))


class Observer(HookPlugin):
    """A plugin with a forward hook that does nothing (test only)."""

    def forward(self, ctx, module, args, output):
        pass


def with_plugin(tmp_path, name, cls):
    """A copy of conf/ with one more plugin config."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "plugins" / f"{name}.yaml").write_text(f"{name}:\n  _target_: test_plugin_kit.{cls.__name__}\n  every_n_steps: 1\n")
    return conf


def test_the_kit_names_a_plugin_that_reads_the_host_in_a_hook(tmp_path):
    conf = with_plugin(tmp_path, "reads", ReadsOnTheHost)
    with pytest.raises(AssertionError, match=r"plugin 'reads' reads tensors on the host inside its hooks: \{\(0, 'item'\): 3, \(3, 'item'\): 3"):  # 3 layers, active steps 0, 3, 6
        testing.check_no_host_sync("reads", tmp_path / "run", conf)


def test_the_kit_takes_a_plugin_class_as_well(tmp_path):
    testing.check_exact_resume(Observer, tmp_path, ROOT / "conf")  # as plugins.observer
    with pytest.raises(AssertionError, match=r"plugin 'reads_on_the_host' reads tensors on the host inside its hooks"):
        testing.check_no_host_sync(ReadsOnTheHost, tmp_path / "sync", ROOT / "conf")


def test_the_kit_names_hooks_left_on_the_model(tmp_path, monkeypatch):
    conf = with_plugin(tmp_path, "plain", Observer)
    monkeypatch.setattr("hooktrain.session.HookSession.detach", lambda self, plugin: None)  # a session that forgets its handles
    with pytest.raises(AssertionError, match=r"plugin 'plain': after a fit, hooks are left on the model"):
        testing.check_hooks_removed("plain", tmp_path / "run", conf)
