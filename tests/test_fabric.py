"""The Fabric engine (trainer=fabric): the same run as the Trainer's, its own exact resume, DDP, and what it refuses."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.plugins import MixedPrecision
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ON_CPU_AND_CUDA, every_plugin, run_cli
from hooktrain import HooktrainError, train
from hooktrain.build import build
from hooktrain.data import SyntheticDataModule
from hooktrain.engines.fabric import FabricTrainer
from hooktrain.models import MLP
from hooktrain.task import ClassifierTask
from hooktrain.testing import identical

NOT_REPRODUCIBLE = ("plugin_state.module_timer.",)  # wall-clock times


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_tensors(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith(skip):
            assert identical(a[key], b[key]), key  # NaN equal to NaN: empty picture columns


@pytest.mark.slow
def test_both_engines_train_the_same_model_bit_for_bit_and_log_the_same(make_cfg, tmp_path):
    """LeNet (no dropout, so no random stream to line up) with every plugin, clipping and accumulation: 4 batches
    make a step of 3 and one of the epoch's last batch alone, as the Trainer steps it."""
    settings = ["model=lenet", *every_plugin(), "trainer.gradient_clip_val=0.05", "trainer.accumulate_grad_batches=3"]
    trainer_metrics = train(make_cfg(*settings, f"paths.output_dir={tmp_path / 'trainer'}"))
    fabric_metrics = train(make_cfg(*settings, "trainer=fabric", f"paths.output_dir={tmp_path / 'fabric'}"))

    assert fabric_metrics == trainer_metrics
    checkpoints = {engine: torch.load(tmp_path / engine / "checkpoints" / "last.ckpt", weights_only=True) for engine in ("trainer", "fabric")}
    assert checkpoints["fabric"]["global_step"] == checkpoints["trainer"]["global_step"] == 2
    assert_same_tensors(checkpoints["trainer"]["state_dict"], checkpoints["fabric"]["state_dict"], skip=NOT_REPRODUCIBLE)
    assert checkpoints["fabric"]["lr_schedulers"] == checkpoints["trainer"]["lr_schedulers"]
    exported = {engine: torch.load(tmp_path / engine / "model.pt", weights_only=True) for engine in ("trainer", "fabric")}
    assert_same_tensors(exported["trainer"], exported["fabric"])
    assert (tmp_path / "fabric" / "checkpoints" / "best.ckpt").is_file()

    trainer_scalars, fabric_scalars = scalars(tmp_path / "trainer"), scalars(tmp_path / "fabric")
    assert fabric_scalars.keys() == trainer_scalars.keys() - {"epoch"}  # Lightning's epoch counter is no chart of the run
    for tag in ("train/loss", "val/acc", "test/acc", "lr-Adam", "watch/grad_logger/grad_norm/features.conv1"):
        assert fabric_scalars[tag] == trainer_scalars[tag], tag
    assert [step for step, _ in fabric_scalars["test/acc"]] == [2]  # once, at the last step


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("device", ON_CPU_AND_CUDA)
def test_a_resumed_run_equals_a_straight_one_bit_for_bit(make_cfg, tmp_path, device):
    """The MLP's dropout and random pruning draw from torch's random state: it must be restored too."""

    def run(out, *extra):
        train(make_cfg(
            "trainer=fabric", "model=mlp", "trainer.deterministic=true", "task.scheduler.T_max=2", *every_plugin(),
            "plugins.pruning.method=random_unstructured", "plugins.pruning.start=0", "plugins.pruning.end=8",
            f"paths.output_dir={out}", *device, *extra,
        ))
        return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)

    straight = run(tmp_path / "straight", "trainer.max_epochs=2")
    run(tmp_path / "resumed", "trainer.max_epochs=1")
    resumed = run(tmp_path / "resumed", "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt'}")
    assert (straight["global_step"], resumed["global_step"], resumed["epoch"]) == (8, 8, 2)
    assert_same_tensors(straight["state_dict"], resumed["state_dict"], skip=NOT_REPRODUCIBLE)
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert_same_tensors(a, b)
    assert resumed["best_scores"] == straight["best_scores"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_best_ckpt_keeps_the_best_monitored_epoch_across_a_resume(make_cfg, tmp_path):
    """Monitoring the *highest* training loss makes the first epoch the best one (the loss falls): a later epoch in
    best.ckpt means a comparison turned around, or a best score forgotten on resume."""

    def run(out, *extra):
        train(make_cfg(
            "trainer=fabric", "model=mlp", "task.scheduler.T_max=3", "callbacks.model_checkpoint.monitor=train/loss",
            "callbacks.model_checkpoint.mode=max", f"paths.output_dir={out}", *extra,
        ))
        return {name: torch.load(out / "checkpoints" / f"{name}.ckpt", weights_only=True) for name in ("best", "last")}

    straight = run(tmp_path / "straight", "trainer.max_epochs=3")
    run(tmp_path / "resumed", "trainer.max_epochs=1")
    resumed = run(tmp_path / "resumed", "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt'}")
    for checkpoints in (straight, resumed):
        assert (checkpoints["best"]["epoch"], checkpoints["last"]["epoch"]) == (1, 3)
    assert resumed["last"]["best_scores"] == straight["last"]["best_scores"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.val_check_interval=0.5", r"`trainer.val_check_interval`: the Fabric engine \(trainer=fabric\) does not run this "
                                           r"Trainer setting; remove it or train with the Trainer engine"),
        ("trainer.strategy=fsdp", r"`trainer.strategy`: the Fabric engine runs auto, ddp, .* got 'fsdp'"),
        ("+callbacks.early_stopping={_target_:lightning.pytorch.callbacks.EarlyStopping,monitor:'val/acc'}",
         r"runs no Lightning callback such as EarlyStopping"),
        ("+callbacks.model_checkpoint.save_top_k=3", r"saves a ModelCheckpoint with save_top_k=1"),
        ("callbacks.lr_monitor.logging_interval=step", r"logs the learning rate once per epoch"),
        ("trainer.max_epochs=abc", r"`trainer.max_epochs`"),
    ],
)
def test_what_the_fabric_engine_does_not_run_is_refused_by_name(make_cfg, override, message):
    cfg = make_cfg("trainer=fabric", "model=mlp", override)
    with pytest.raises(HooktrainError, match=message):
        train(cfg)


def test_a_checkpoint_of_the_other_engine_is_refused_before_training(make_cfg, tmp_path):
    train(make_cfg("model=mlp", f"paths.output_dir={tmp_path / 'trainer'}"))
    last = tmp_path / "trainer" / "checkpoints" / "last.ckpt"
    with pytest.raises(HooktrainError, match=r"was written by the Trainer engine, whose loop state this engine cannot continue; resume it with trainer=cpu"):
        train(make_cfg("trainer=fabric", "model=mlp", f"ckpt_path={last}", f"paths.output_dir={tmp_path / 'fabric'}"))
    assert not (tmp_path / "fabric").exists()  # nothing trained, nothing written

    train(make_cfg("trainer=fabric", "model=mlp", f"paths.output_dir={tmp_path / 'fabric_run'}"))
    last = tmp_path / "fabric_run" / "checkpoints" / "last.ckpt"
    with pytest.raises(HooktrainError, match=r"was written by the Fabric engine, whose loop state this engine cannot continue; resume it with trainer=fabric"):
        train(make_cfg("model=mlp", f"ckpt_path={last}", f"paths.output_dir={tmp_path / 'trainer_again'}"))
    assert not (tmp_path / "trainer_again").exists()


def test_bf16_mixed_precision_trains_with_plugins_seeing_finite_gradients(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer=fabric", "model=mlp", "trainer.precision=bf16-mixed", "plugins=[grad_logger,grad_clip]",
                             "plugins.grad_logger.every_n_steps=1", "trainer.max_epochs=2"))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["plugin_state.grad_logger.updates"].item() == 8
    assert torch.isfinite(state["plugin_state.grad_logger.ema_grad_norm"]).all() and state["plugin_state.grad_logger.ema_grad_norm"].min() > 0
    assert 0 <= metrics["test/acc"] <= 1


def test_the_progress_bar_and_the_test_table_show_on_the_command_line(tmp_path):
    result = run_cli("train.py", "trainer=fabric", "model=mlp", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                     "trainer.limit_val_batches=1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch 0" in result.stderr and "test/acc" in result.stdout
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_with_every_plugin(tmp_path):
    result = run_cli(
        "train.py", "trainer=fabric", "trainer.strategy=ddp", "trainer.devices=2", "model=mlp", "trainer.max_epochs=1",
        "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false", *every_plugin(log_every_n_steps=1),
        "plugins.pruning.start=0", "plugins.pruning.end=4", "plugins.pruning.amount=0.5", f"hydra.run.dir={tmp_path}",
        "plugins.ablate.phases=[train]",  # the test below is then the exported model's
    )
    assert result.returncode == 0, result.stderr[-3000:]
    writers = {path.name.split(".")[-2] for path in (tmp_path / "tensorboard").glob("events.*")}
    assert len(writers) == 1  # one process (rank 0) wrote every event file
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    assert checkpoint["global_step"] == 6
    assert state["plugin_state.nan_guard.checked_steps"].item() == 6
    assert state["plugin_state.grad_logger.updates"].item() == 6
    assert state["plugin_state.pruning.target_sparsity"].item() == pytest.approx(0.5)
    events = scalars(tmp_path)
    assert [step for step, _ in events["test/acc"]] == [6]
    # The test metrics sum both processes' halves of the test set: they are the saved model's on the whole set.
    run_cfg = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")  # the run's own data and model settings
    data = build(run_cfg.data, "data")
    data.setup("test")
    images, labels = data.test_dataloader().dataset.tensors
    model = build(run_cfg.model, "model").eval()
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with torch.no_grad():
        logits = model(images)
    assert events["test/acc"][0][1] == pytest.approx((logits.argmax(dim=1) == labels).float().mean().item(), abs=1e-6)
    assert events["test/loss"][0][1] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)


def test_the_csv_logger_gets_the_same_metrics(make_cfg, tmp_path):
    train(make_cfg("trainer=fabric", "model=mlp", "logger=csv", "trainer.max_epochs=2"))
    header, *rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss", "lr-Adam"} <= set(header.split(","))
    assert len(rows) >= 8


@pytest.mark.slow
def test_a_compiled_model_keeps_its_hooks_and_its_names(make_cfg, tmp_path):
    train(make_cfg("trainer=fabric", "model=mlp", "compile=true", "plugins=[grad_logger]", "plugins.grad_logger.every_n_steps=2"))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["plugin_state.grad_logger.updates"].item() == 2  # steps 0 and 2 of 4: the gated hooks fired, and only then
    assert not any("_orig_mod" in key for key in torch.load(tmp_path / "model.pt", weights_only=True))


def fp16_under_a_grad_scaler() -> MixedPrecision:
    """fp16 under a GradScaler on the CPU (Fabric's "16-mixed" there is bf16): the plugin, given by hand."""
    return MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))


def test_gradient_clipping_under_a_grad_scaler_clips_the_true_gradients():
    """Without any plugin too: clipping scaled gradients would shrink every step by the scale (here 1024)."""
    def trained(plugins):
        torch.manual_seed(0)
        trainer = FabricTrainer(accelerator="cpu", devices=1, plugins=plugins, max_epochs=1, limit_train_batches=3, limit_val_batches=0,
                                num_sanity_val_steps=0, gradient_clip_val=1e-3, enable_progress_bar=False, enable_model_summary=False)
        task = ClassifierTask(MLP(in_features=64, hidden_sizes=[16], num_classes=10), optimizer=partial(torch.optim.SGD, lr=1.0))
        before = torch.cat([p.detach().flatten() for p in task.model.parameters()])
        trainer.fit(task, SyntheticDataModule(num_samples=256))
        return torch.cat([p.detach().flatten() for p in task.model.parameters()]) - before

    fp32 = trained(None)
    scaled = trained([fp16_under_a_grad_scaler()])
    assert 1e-3 < fp32.norm() <= 3e-3 + 1e-6  # 3 clipped steps of norm 1e-3 at lr 1
    torch.testing.assert_close(scaled, fp32, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", "64-true", "16-mixed"])
def test_one_process_calls_the_precision_plugin_itself_and_trains_what_fabrics_wrappers_train(precision, monkeypatch):
    """Fabric's module, backward and optimizer wrappers cost 0.1-0.3 ms a step under bf16-mixed for bookkeeping that one
    process does not need: the loop skips them, and must train the same weights, bit for bit."""

    class LogitPenalty(ClassifierTask):
        def loss(self, logits, targets):  # `*` is none of the ops autocast runs in fp32: the logits' own dtype counts
            return super().loss(logits, targets) + 1e-2 * (logits * logits).mean()

    def trained():
        torch.manual_seed(0)
        setting = {"plugins": [fp16_under_a_grad_scaler()]} if precision == "16-mixed" else {"precision": precision}
        trainer = FabricTrainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=6, limit_val_batches=0, num_sanity_val_steps=0,
                                accumulate_grad_batches=2, gradient_clip_val=0.05, enable_progress_bar=False, enable_model_summary=False, **setting)
        task = LogitPenalty(MLP(in_features=64, hidden_sizes=[16], num_classes=10), optimizer=partial(torch.optim.Adam, lr=1e-2))
        before = [p.detach().clone() for p in task.model.parameters()]
        trainer.fit(task, SyntheticDataModule(num_samples=512))
        assert trainer.global_step == 3
        after = [p.detach().float() for p in task.model.parameters()]
        assert not any(identical(a, b.float()) for a, b in zip(after, before))  # every tensor trained
        return trainer, after

    direct_trainer, direct = trained()
    assert direct_trainer._direct()
    monkeypatch.setattr(FabricTrainer, "_direct", lambda self: False)
    wrapped_trainer, wrapped = trained()
    assert all(identical(a, b) for a, b in zip(direct, wrapped))
    assert direct_trainer.fabric.strategy.precision.state_dict() == wrapped_trainer.fabric.strategy.precision.state_dict()  # a GradScaler's
