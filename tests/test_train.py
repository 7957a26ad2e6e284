"""The main job end to end: the real config, a few steps, real event files, checkpoints and model.pt."""

import inspect
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from lightning.pytorch import Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from conftest import ROOT, every_plugin, run_cli
from hooktrain import HookCallback, HookPlugin, HooktrainError, PluginHookError, train
from hooktrain.errors import NonFiniteError
from hooktrain.registry import plugin_names
from hooktrain.config import trainer_schema
from hooktrain.models import LeNet

LENET_LAYERS = ["features.conv1", "features.conv2", "classifier.fc1", "classifier.fc2", "classifier.fc3"]


def read_events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def test_main_job_logs_grad_stats_checkpoints_buffers_and_exports_plain_weights(make_cfg, tmp_path):
    cfg = make_cfg("model=lenet", "plugins=[grad_logger]", "plugins.grad_logger.every_n_steps=2")
    metrics = train(cfg)
    assert set(metrics) == {"test/acc", "test/loss", "val/acc_best"}
    best = max(event.value for event in read_events(tmp_path / "tensorboard").Scalars("val/acc"))
    assert metrics["val/acc_best"] == pytest.approx(best)  # what a sweeper optimizes: the best validation epoch

    events = read_events(tmp_path / "tensorboard")
    scalars, histograms = events.Tags()["scalars"], events.Tags()["histograms"]
    for layer in LENET_LAYERS:
        for stat in ("grad_norm", "param_grad_norm"):
            assert [event.step for event in events.Scalars(f"watch/grad_logger/{stat}/{layer}")] == [0, 2]
        assert f"watch/grad_logger/ema_grad_norm/{layer}" not in scalars  # a buffer, not a chart: TensorBoard smooths already
        assert f"watch/grad_logger/grad/{layer}" in histograms and f"watch/grad_logger/param_grad/{layer}" in histograms
    assert "test/acc" in scalars
    assert [event.value for event in events.Scalars("lr-Adam")] == [pytest.approx(0.002)]  # the configured lr, epoch 0
    assert "custom_scalars__config__" in events.Tags()["tensors"]  # one chart per stat, a line per layer
    logged = events.Scalars("watch/grad_logger/grad_norm/features.conv1")[-1].value

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    assert state["plugin_state.grad_logger.updates"].item() == 2  # steps 0 and 2 of 4
    assert state["plugin_state.grad_logger.ema_grad_norm"].shape == (len(LENET_LAYERS),)
    assert torch.isfinite(state["plugin_state.grad_logger.ema_grad_norm"]).all()
    assert logged > 0

    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    plain = LeNet(in_channels=1, num_classes=10, image_size=32)
    plain.load_state_dict(weights)  # strict: no plugin_state, no "model." prefix
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.parametrize("model_name", ["mlp", "nested"])
def test_other_models_train_with_the_plugin_on_their_layers(make_cfg, tmp_path, model_name):
    train(make_cfg(f"model={model_name}", "plugins=[grad_logger]", "plugins.grad_logger.targets=[*fc1]"))
    tags = read_events(tmp_path / "tensorboard").Tags()["scalars"]
    expected = "fc1" if model_name == "mlp" else "head.fc1"
    assert f"watch/grad_logger/grad_norm/{expected}" in tags


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resuming in place
def test_resume_restores_plugin_buffers_and_continues(make_cfg, tmp_path):
    train(make_cfg("model=mlp", "plugins=[grad_logger]", "plugins.grad_logger.every_n_steps=1", "task.scheduler.T_max=2"))  # extendable
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)
    assert before["global_step"] == 4
    train(make_cfg("model=mlp", "plugins=[grad_logger]", "plugins.grad_logger.every_n_steps=1", "task.scheduler.T_max=2", "trainer.max_epochs=2",
                   f"ckpt_path={last}"))
    after = torch.load(last, weights_only=True)
    assert after["global_step"] == 8
    assert after["state_dict"]["plugin_state.grad_logger.updates"].item() == 8  # 4 restored + 4 new


def test_a_checkpoint_of_another_model_is_refused_before_training(make_cfg, tmp_path):
    train(make_cfg("model=mlp"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(HooktrainError, match=r"`ckpt_path`: .* holds another model \(differing tensors: \[\('classifier.fc1.bias'"):
        train(make_cfg("model=lenet", f"ckpt_path={last}"))


def test_a_nan_loss_stops_the_run_naming_the_step(make_cfg):
    with pytest.raises(NonFiniteError, match=r"the training loss is nan at step 0; plugins=\[nan_guard\] names"):
        train(make_cfg("model=mlp", "data=synthetic", "data.noise=nan"))  # NaN images


class RaisingPlugin(HookPlugin):
    """Fails in its forward hook from step ``fail_at`` on (a plugin bug in the middle of a run); keeps its modules."""

    def __init__(self, fail_at: int = 9, **kwargs):
        super().__init__(**kwargs)
        self.fail_at, self.modules = fail_at, {}

    def setup(self, state, modules):
        self.modules = modules

    def forward(self, ctx, module, args, output):
        if ctx.step >= self.fail_at:
            raise RuntimeError("boom")


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_plugin_error_stops_the_run_and_leaves_the_last_checkpoint_intact(make_cfg, tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    train(make_cfg("model=mlp", "trainer.max_epochs=2", "task.scheduler.T_max=4"))  # steps 0-7; the resumed run fails in its first epoch
    broken = ["+plugins.broken._target_=test_train.RaisingPlugin", "+plugins.broken.targets=[fc1]"]
    with pytest.raises(PluginHookError, match=r"plugin 'broken' failed at step 9 in its forward hook on module 'fc1': RuntimeError: boom"):
        train(make_cfg("model=mlp", "trainer.max_epochs=4", "task.scheduler.T_max=4", f"ckpt_path={last}", *broken))
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 8  # the epoch that ended before the error, whole


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_plugin_error_reads_as_one_sentence_on_the_command_line(tmp_path):
    broken = ["+plugins.broken._target_=test_train.RaisingPlugin", "+plugins.broken.targets=[fc1]", "+plugins.broken.fail_at=3"]
    result = run_cli("train.py", "model=mlp", "trainer.max_epochs=1", *broken, f"hydra.run.dir={tmp_path}", env={"PYTHONPATH": "tests"})
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: plugin 'broken' failed at step 3 in its forward hook on module 'fc1': RuntimeError: boom"
    full = run_cli("train.py", "model=mlp", "trainer.max_epochs=1", *broken, f"hydra.run.dir={tmp_path}", env={"PYTHONPATH": "tests", "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr  # the whole story, when asked for


def test_every_hook_is_removed_after_a_plugin_error(make_cfg):
    plugin = RaisingPlugin(name="broken", fail_at=2, targets=["fc1", "head"])
    from hooktrain.run import build_run

    run = build_run(make_cfg("model=mlp"))
    run.trainer.callbacks.append(HookCallback([plugin]))
    with pytest.raises(PluginHookError, match="at step 2"):
        run.trainer.fit(run.task, datamodule=run.datamodule)
    assert set(plugin.modules) == {"fc1", "head"}
    for module in plugin.modules.values():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks)


def test_trainer_schema_covers_every_plain_trainer_argument(make_cfg):
    keys = set(make_cfg().trainer)
    arguments = set(inspect.signature(Trainer.__init__).parameters) - {"self", "callbacks", "logger", "plugins"}
    assert arguments <= keys, arguments - keys
    assert set(trainer_schema().__dataclass_fields__) == keys
    assert make_cfg("trainer.gradient_clip_val=0.5").trainer.gradient_clip_val == 0.5
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        make_cfg("trainer.max_epoch=3")


@pytest.mark.parametrize(
    "override,message",
    [
        ("plugins.grad_logger.ema_decay=1.0", r"`plugins.grad_logger.ema_decay` must be a number in \[0.0, 1.0\), got 1.0"),
        ("task.optimizer.lr=-0.1", r"`task.optimizer` / `task.scheduler`: Invalid learning rate: -0.1"),
        ("task.optimizer.lr=0", r"`task.optimizer.lr` must be a number > 0, got 0"),
        ("data.batch_size=many", r"`data.batch_size` must be a valid integer, unable to parse string as an integer; got 'many'"),
        ("model.image_size=16", r"the model cannot take the data's images of shape \(1, 8, 8\)"),
        ("ckpt_path=/no/such.ckpt", r"`ckpt_path`: no checkpoint file at '/no/such.ckpt'"),
        ("ckpt_path=pyproject.toml", r"`ckpt_path`: 'pyproject.toml' is not a Lightning checkpoint"),
        ("model.num_classes=5", r"the model outputs shape \(5,\) per sample but the data has 10 classes"),
        ("model._target_=hooktrain.models.Nope", r"cannot build `model` \(hooktrain.models.Nope\): ModuleNotFoundError: No module named"),
    ],
)
def test_bad_values_stop_before_training_with_the_field_named(make_cfg, tmp_path, override, message):
    extra = ["data.image_size=8"] if override.startswith("model.image_size") else []
    with pytest.raises(HooktrainError, match=message):
        train(make_cfg("plugins=[grad_logger]", override, *extra))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_cli_lists_plugins_and_config_groups():
    listing = run_cli("-m", "hooktrain", "plugins")
    assert listing.returncode == 0, listing.stderr
    assert "grad_logger  (plugins.grad_logger.GradLogger)" in listing.stdout
    assert "Logs per-layer gradient norms" in listing.stdout
    assert "every_n_steps: 50" in listing.stdout

    help_text = run_cli("train.py", "--help").stdout
    groups = ("model: chimera, fixed_hidden_mlp, lenet, mlp, nest_mlp, nested", "data: digits, fashion_mnist, folder, mnist, synthetic, tensors",
              "trainer: cpu, ddp, fabric, gpu", "logger: csv, tensorboard", "task: classifier, sgd", "debug: fast_dev_run, overfit, profiler",
              "hparams_search: optuna", "plugins: " + ", ".join(plugin_names(ROOT / "conf")))
    for group in groups:
        assert group in help_text, help_text


def test_all_plugins_together_log_checkpoint_and_export(make_cfg, tmp_path):
    cfg = make_cfg("model=lenet", *every_plugin(), "plugins.pruning.amount=0.5", "plugins.pruning.start=0", "plugins.pruning.end=2")
    metrics = train(cfg)

    events = read_events(tmp_path / "tensorboard")
    tags = events.Tags()
    for name, stat in [("grad_clip", "pre_clip_norm_max"), ("pruning", "sparsity"), ("module_timer", "backward_ms"),
                       ("weight_stats", "update_ratio"), ("grad_logger", "grad_norm")]:
        assert f"watch/{name}/{stat}/features.conv1" in tags["scalars"], name
    assert "watch/activation_logger/dead_fraction/features.act1" in tags["scalars"]  # at the ReLU, where it means something
    assert not [tag for tag in tags["scalars"] if "/ema_" in tag or tag.startswith("watch/activation_logger/min/")]  # nothing constant or repeated
    assert "watch/pruning/overall_sparsity" in tags["scalars"] and "watch/overhead_share/grad_clip" in tags["scalars"]
    for histogram in ("watch/activation_logger/activation/classifier.act3", "watch/grad_logger/param_grad/classifier.fc1", "watch/weight_stats/weight/classifier.fc1"):
        assert histogram in tags["histograms"], histogram
    for image in ("watch/activation_logger/over_time/classifier.act3", "watch/activation_logger/by_layer/dead_fraction", "watch/grad_logger/by_layer/grad_norm"):
        assert image in tags["images"], image
    raw_tags = {value.tag for path in (tmp_path / "tensorboard").glob("events.*") for event in EventFileLoader(str(path)).Load()
                for value in event.summary.value}
    assert "_hparams_/session_start_info" in raw_tags  # the HParams tab, with the test metrics

    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in ["plugin_state.activation_logger.distribution", "plugin_state.grad_logger.by_layer.grad_norm", "plugin_state.grad_clip.clipped_steps", "plugin_state.pruning.target_sparsity",
                "plugin_state.nan_guard.checked_steps", "plugin_state.module_timer.total_forward_ms",
                "plugin_state.weight_stats.ema_update_ratio", "plugin_state.grad_logger.ema_grad_norm",
                "model.features.conv1.weight_mask", "model.classifier.fc3.weight_orig"]:
        assert key in state, key
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    LeNet(in_channels=1, num_classes=10, image_size=32).load_state_dict(weights)
    total = sum(weights[f"{layer}.weight"].numel() for layer in LENET_LAYERS)
    zeros = sum((weights[f"{layer}.weight"] == 0).sum().item() for layer in LENET_LAYERS)
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    logged = events.Scalars("test/acc")
    assert logged[-1].value == pytest.approx(metrics["test/acc"])  # what train() returns is what TensorBoard shows


TUTORIAL_MODULE = """
import torch.nn.functional as F
from torch import nn


class HalvingMLP(nn.Module):
    \"\"\"A user's own module, as the tutorials write them: it scales a layer's output in place.\"\"\"

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.hidden = nn.LazyLinear(width)
        self.out = nn.Linear(width, num_classes)

    def forward(self, X):
        X = self.hidden(X.flatten(1))
        X /= 2
        return self.out(F.relu(X))
"""


@pytest.fixture
def own_model(tmp_path, monkeypatch) -> list[str]:
    """The README's own-model route: a module importable from the user's path, named by ``_target_`` on the command line."""
    (tmp_path / "tutorial_models.py").write_text(TUTORIAL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["~model", "+model._target_=tutorial_models.HalvingMLP", "+model.width=16"]


def test_an_own_module_with_an_inplace_op_trains_with_the_gradient_plugins(make_cfg, own_model, tmp_path):
    gradient_plugins = ["grad_logger", "grad_clip", "nan_guard"]  # output_grad: a tensor hook, which `X /= 2` does not break
    settings = [f"plugins.{name}.every_n_steps=1" for name in gradient_plugins]
    metrics = train(make_cfg(*own_model, f"plugins=[{','.join(gradient_plugins)}]", *settings, "plugins.grad_logger.targets=[hidden]"))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    norms = read_events(tmp_path / "tensorboard").Scalars("watch/grad_logger/grad_norm/hidden")
    assert len(norms) == 4 and all(event.value > 0 for event in norms)  # each step's gradient at the halved output


def test_an_inplace_op_after_a_full_backward_hook_is_explained(make_cfg, own_model):
    cfg = make_cfg(*own_model, "plugins=[module_timer]", "plugins.module_timer.every_n_steps=1", "plugins.module_timer.targets=[hidden]")
    with pytest.raises(HooktrainError, match=r"a module's output is modified in place .* make that operation out of place"):
        train(cfg)


def hparams_of(log_dir: Path):
    """The HParams plugin's experiment and session-start records of an event file."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    records = {}
    for path in log_dir.glob("events.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag.startswith("_hparams_/"):
                    records[value.tag] = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    return records["_hparams_/experiment"].experiment, records["_hparams_/session_start_info"].session_start_info


def test_test_metrics_are_logged_once_at_the_last_step_and_hparams_name_the_run(make_cfg, tmp_path):
    train(make_cfg("model=mlp", "plugins=[grad_logger]"))
    events = read_events(tmp_path / "tensorboard")
    assert [event.step for event in events.Scalars("test/acc")] == [4]  # once, at the fit's last step (was: again at 0)
    assert [event.step for event in events.Scalars("val/acc_best")] == [4]
    experiment, session = hparams_of(tmp_path / "tensorboard")
    assert [info.name.tag for info in experiment.metric_infos] == ["val/acc_best", "test/acc", "test/loss"]
    assert len(session.hparams) <= 25
    assert session.hparams["model"].string_value == "MLP" and session.hparams["plugins"].string_value == "grad_logger"
    assert session.hparams["lr"].number_value == pytest.approx(0.002)


def test_run_settings_are_plain_values_with_every_command_line_override_up_to_25(make_cfg):
    from hooktrain.hparams import run_settings

    settings = run_settings(make_cfg(), ["model=mlp", "task.optimizer.lr=0.01", "hydra.run.dir=x", *[f"+extra{i}=1" for i in range(30)]])
    assert settings["model"] == "LeNet" and settings["task.optimizer.lr"] == "0.01" and "hydra.run.dir" not in settings
    assert len(settings) == 25
    unscheduled = run_settings(make_cfg("task.scheduler=null"), ["task.scheduler=null", "+layers=[8,8]"])
    assert unscheduled["scheduler"] == "None" and unscheduled["layers"] == "[8,8]"
    assert all(isinstance(value, (int, float, str, bool)) for value in unscheduled.values())  # what TensorBoard's HParams take


def test_the_hparams_tab_shows_the_command_lines_changes_then_model_plugins_optimizer_lr(make_cfg):
    from hooktrain.hparams import run_settings, shown_at_first

    overrides = ["+seed=3", "hydra.run.dir=x", "task.optimizer.lr=0.01"]
    assert shown_at_first(run_settings(make_cfg(), overrides), overrides) == ["seed", "task.optimizer.lr", "model", "plugins", "optimizer"]
    assert shown_at_first(run_settings(make_cfg())) == ["model", "plugins", "optimizer", "lr", "data"]
