"""Every shipped config composes and builds; sweeps, launchers, callbacks and debug modes run as a user runs them."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import FAST, ROOT, run_cli
from data_files import write_idx_dataset, write_image_folder, write_tensor_file
from hooktrain import train
from hooktrain.run import build_run
from test_train import read_events

CONF = ROOT / "conf"
BUILT = ["model", "data", "task", "callbacks", "logger", "experiment", "debug", "hparams_search"]  # trainer=gpu needs a GPU to build


def data_overrides(option: str, tmp_path: Path) -> list[str]:
    """The files a data option reads, written here."""
    if option in ("mnist", "fashion_mnist"):
        return [f"data.data_dir={write_idx_dataset(tmp_path / option)}"]
    if option == "folder":
        return [f"data.root={write_image_folder(tmp_path / 'images')}", "model.num_classes=3"]
    if option == "tensors":
        return [f"data.path={write_tensor_file(tmp_path / 'data.pt', classes=10)}", "model=mlp"]  # 8x8 tensors, as stored
    return []


@pytest.mark.parametrize("group,option", [(group, path.stem) for group in BUILT for path in sorted((CONF / group).glob("*.yaml"))])
def test_every_shipped_config_builds_a_run(make_cfg, tmp_path, group, option):
    extra = data_overrides(option, tmp_path) if group == "data" else []
    cfg = make_cfg(f"{group}={option}", *extra)
    run = build_run(cfg)  # every _target_ checked against its signature, the model fed the data's images
    assert run.trainer is not None and run.task.model is not None


@pytest.mark.parametrize("option", [path.stem for path in sorted((CONF / "trainer").glob("*.yaml"))])
def test_every_trainer_config_composes(make_cfg, option):
    assert make_cfg(f"trainer={option}").trainer._target_


@pytest.mark.parametrize("launcher,target", [("slurm", "SlurmLauncher"), ("local_parallel", "JoblibLauncher")])
def test_the_launcher_configs_compose_over_hydras_plugins(launcher, target):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":  # one task per device: what Lightning's SLURM environment expects
        assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices == 1 and cfg.hydra.launcher.nodes == cfg.trainer.num_nodes


def test_callback_lists_add_early_stopping_and_swap_the_progress_bar(make_cfg):
    from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar, TQDMProgressBar

    run = build_run(make_cfg("callbacks=[default,early_stopping,rich_progress]", "trainer.enable_progress_bar=true"))
    kinds = [type(callback) for callback in run.trainer.callbacks]
    assert EarlyStopping in kinds and RichProgressBar in kinds and TQDMProgressBar not in kinds


def test_early_stopping_ends_a_run_that_stopped_improving(make_cfg):
    cfg = make_cfg("callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=1", "trainer.max_epochs=6",
                   "task.optimizer.lr=1e-12", "task.scheduler=null")  # the weights barely move, val/acc stays put
    run = build_run(cfg)
    run.trainer.fit(run.task, datamodule=run.datamodule)
    assert run.trainer.current_epoch == 2  # epoch 0 sets the best, epoch 1 does not improve: stopped after it


def test_fast_dev_run_runs_one_batch_of_each_split_and_writes_no_checkpoint(make_cfg, tmp_path):
    metrics = train(make_cfg("debug=fast_dev_run", "plugins=[grad_logger]"))
    assert set(metrics) == {"test/acc", "test/loss"} and not (tmp_path / "checkpoints").exists()


def test_overfit_learns_two_batches_by_heart(make_cfg, tmp_path):
    train(make_cfg("debug=overfit", "trainer.limit_test_batches=2", fast=False))  # LeNet, as `python train.py debug=overfit`
    accuracy = [event.value for event in read_events(tmp_path / "tensorboard").Scalars("train/acc")]
    assert accuracy[-10:] == [1.0] * 10  # the same 2 batches each epoch, not 2 shuffled ones


def test_the_profiler_reports_each_hooks_time_after_the_run(make_cfg, caplog):
    import logging

    one_epoch = [override for override in FAST if not override.startswith("trainer.max_epochs")]  # as debug=profiler sets it
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        train(make_cfg("debug=profiler", *one_epoch, fast=False))
    assert "FIT Profiler Report" in caplog.text and "run_training_batch" in caplog.text


@pytest.mark.slow
def test_an_optuna_sweep_of_two_trials_reports_the_best_validation_accuracy(tmp_path):
    result = run_cli("train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *FAST, f"hydra.sweep.dir={tmp_path}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = [read_events(tmp_path / trial / "tensorboard").Scalars("val/acc_best")[-1].value for trial in ("0", "1")]
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(best))
    assert set(results.best_params) == {"task.optimizer.lr", "task.optimizer.weight_decay", "data.batch_size"}


@pytest.mark.slow
def test_a_local_parallel_sweep_runs_each_setting_in_its_own_process(tmp_path):
    result = run_cli("train.py", "-m", "hydra/launcher=local_parallel", "task.optimizer.lr=0.001,0.003", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    learning_rates = [OmegaConf.load(tmp_path / job / "config.yaml").task.optimizer.lr for job in ("0", "1")]
    assert learning_rates == [0.001, 0.003] and all((tmp_path / job / "model.pt").is_file() for job in ("0", "1"))
