"""Bad input through the real train.py: one sentence naming the field, no traceback, nothing written, before training."""

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# (overrides, the sentence it must get). Most fail before any data loads; all before the first step.
CASES = [
    # named in the front-door issue
    ("seed=abc", r"`seed` must be an integer, got 'abc'"),
    ("hydra.run.dir=README.md/run", r"`hydra.run.dir=README.md/run`: .*README.md is a file, so no run directory can be made under it"),
    ("hydra.run.dir=/proc/run", r"`hydra.run.dir=/proc/run`: /proc is a kernel file system"),
    ("trainer.max_epochs=abc", r"`trainer.max_epochs` must be a valid integer.*; got 'abc'"),
    ("trainer.log_every_n_steps=0", r"`trainer.log_every_n_steps` must be an integer >= 1, got 0"),
    ("callbacks.model_checkpoint.monitor=val/nosuch", r"`callbacks.model_checkpoint.monitor`: the task logs no metric 'val/nosuch'; it logs .*val/acc"),
    ("plugins=[pruning] plugins.pruning.method=ln_structured plugins.pruning.dim=5", r"`plugins.pruning.dim`: module 'features.conv1' has a 4-dimensional weight .* got 5"),
    ("model=mlp model.hidden_sizes=abc", r"`model.hidden_sizes`: 'str' instances are not allowed as a Sequence value; got 'abc'"),
    ("ckpt_path=README.md", r"`ckpt_path`: 'README.md' is not a Lightning checkpoint \(torch.load cannot read it"),
    ("plugins=[grad_logger,grad_logger]", r"`plugins=\[grad_logger,grad_logger\]` lists grad_logger more than once"),
    ("trainer.devices=64", r"`trainer.devices`: 64 CPU processes on a machine with \d+ cores"),
    ("model=resnet", r"`model=resnet`: there is no model 'resnet'; choose one of chimera, fixed_hidden_mlp, lenet, mlp, nest_mlp, nested"),
    ("trainer.max_epoch=3", r"`trainer.max_epoch` is not a setting of `trainer`; did you mean `trainer.max_epochs`\?"),
    # more of our own
    ("data.batch_sizes=3", r"`data.batch_sizes` is not a setting of `data`; did you mean `data.batch_size`\?"),
    ("foo=1", r"`foo` is not a setting of the config; its keys are seed, .*model, data"),
    ("plugins=[grad_logger", r"cannot read this override: .*the form is key=value"),
    ("seed", r"cannot read this override: Error parsing override 'seed'"),
    ("plugins=[no_such_plugin]", r"unknown plugin 'no_such_plugin' in `plugins=\[no_such_plugin\]`; available plugins: ablate, "),
    ("logger=nosuch", r"`logger=nosuch`: there is no logger 'nosuch'; choose one of csv, tensorboard"),
    ("trainer=tpu", r"`trainer=tpu`: there is no trainer 'tpu'; choose one of cpu, ddp, fabric, gpu"),
    ("trainer.precision=17", r"`trainer.precision` must be 64, 32 or 16 or .*'bf16-mixed'.*; got 17"),
    ("trainer.max_steps=abc", r"`trainer.max_steps` must be a valid integer.*; got 'abc'"),
    ("trainer.gradient_clip_val=abc", r"`trainer.gradient_clip_val` must be a valid .*number.*; got 'abc'"),  # pydantic's wording varies
    ("task.optimizer.lr=abc", r"`task.optimizer.lr` must be a valid number.*; got 'abc'"),
    ("task.optimizer.lr=0", r"`task.optimizer.lr` must be a number > 0, got 0"),
    ("task.optimizer.betas=[0.9]", r"`task.optimizer.betas`"),
    ("data.batch_size=0", r"`data.batch_size` must be an integer >= 1, got 0"),
    ("data.val_fraction=1.5", r"`data.val_fraction` must be a number in \[0.0, 1.0\), got 1.5"),
    ("data.image_size=0", r"`data.image_size` must be an integer >= 1, got 0"),
    ("model=mlp model.dropout=2", r"`model.dropout` must be a number in \[0.0, 1.0\), got 2"),
    ("model=mlp model.activation=Relu", r"`model.activation` must name a torch.nn activation such as ReLU"),
    ("model.num_classes=5", r"the model outputs shape \(5,\) per sample but the data has 10 classes"),
    ("model=lenet model.image_size=16 data.image_size=8", r"the model cannot take the data's images of shape \(1, 8, 8\)"),
    ("compile=fast", r"`compile` must be true, false or a torch.compile backend .* got 'fast'"),
    ("ckpt_path=/no/such.ckpt", r"`ckpt_path`: no checkpoint file at '/no/such.ckpt'"),
    ("plugins=[ablate]", r"`plugins.ablate.targets`: name the modules to ablate"),
    ("plugins=[ablate] plugins.ablate.targets=[classifier.fc2] plugins.ablate.units=[84]", r"`plugins.ablate.units`: module 'classifier.fc2' has 84 units"),
    ("plugins=[grad_clip] plugins.grad_clip.mode=l3", r"`plugins.grad_clip.mode` must be one of \['norm', 'value'\], got 'l3'"),
    ("plugins=[grad_clip] plugins.grad_clip.max_norm=-1", r"`plugins.grad_clip.max_norm` must be a number > 0, got -1"),
    ("plugins=[activation_logger] plugins.activation_logger.bins=0", r"`plugins.activation_logger.bins` must be an integer >= 1, got 0"),
    ("plugins=[grad_logger] plugins.grad_logger.histograms=maybe", r"`plugins.grad_logger.histograms` must be a valid boolean.*; got 'maybe'"),
    ("plugins=[grad_logger] plugins.grad_logger.every_n_steps=0", r"`plugins.grad_logger.every_n_steps` must be an integer >= 1, got 0"),
    ("plugins=[grad_logger] plugins.grad_logger.ema_decay=1.0", r"`plugins.grad_logger.ema_decay` must be a number in \[0.0, 1.0\), got 1.0"),
    ("plugins=[grad_logger] plugins.grad_logger.phases=[eval]", r"`plugins.grad_logger.phases` must be a non-empty list of \['train', 'validate', 'test', 'predict', 'analyze'\]"),
    ("plugins=[grad_logger] plugins.grad_logger.targets=[nope*]", r"`plugins.grad_logger.targets`: pattern 'nope\*' matches no module"),
    ("plugins=[grad_logger] plugins.grad_logger.typo=1", r"`plugins.grad_logger.typo` is not a setting of `plugins.grad_logger`; did you mean `plugins.grad_logger.types`\?"),
    ("plugins=[grad_logger] plugins.grad_logger.every_n_step=5", r"did you mean `plugins.grad_logger.every_n_steps`\?"),
    ("plugins=[module_timer] compile=true", r"plugin 'module_timer' uses full backward hooks"),
    # the Fabric engine and the analysis plugins
    ("trainer=fabric trainer.val_check_interval=0.5", r"`trainer.val_check_interval`: the Fabric engine \(trainer=fabric\) does not run this Trainer setting"),
    ("trainer=fabric trainer.strategy=deepspeed", r"`trainer.strategy`: the Fabric engine runs auto, ddp"),
    ("trainer=fabric trainer.max_epoch=3", r"`trainer.max_epoch` is not a setting of `trainer`; did you mean `trainer.max_epochs`\?"),
    ("plugins=[patch] plugins.patch.targets=[classifier.fc2]", r"`plugins.patch.file`: no activation file at ''"),
    ("plugins=[activation_cache] plugins.activation_cache.max_samples=0", r"`plugins.activation_cache.max_samples` must be an integer >= 1, got 0"),
    # the toolbox: config groups, data of one's own, models from YAML, per-layer settings, sweeps
    ("data=folder", r"`data.root` needs a value, which its config leaves to you \(\?\?\?\); add data.root=\.\.\. to the command line"),
    ("data=folder data.root=README.md", r"`data.root`: .*README.md is not a folder"),
    ("data=fashion_mnist data.data_dir=/no/such", r"`data.data_dir`: /no/such lacks train-images-idx3-ubyte.gz, .* or set data.download=true"),
    ("data=tensors data.path=README.md", r"`data.path` must be a .pt or .npz file, got 'README.md'"),
    ("data=tensors data.path=/no/such.pt", r"`data.path`: /no/such.pt does not exist"),
    ("callbacks=[default,nosuch]", r"there is no callbacks 'nosuch'; choose among default, early_stopping, "),
    ("experiment=nosuch", r"`experiment=nosuch`: there is no experiment 'nosuch'; choose one of chimera_watched, lenet_pruned"),
    ("debug=nosuch", r"`debug=nosuch`: there is no debug 'nosuch'; choose one of fast_dev_run, overfit, profiler"),
    ("optimized_metric=val/acc", r"`optimized_metric` must be one of test/acc, test/loss, val/acc_best \(or null\), got 'val/acc'"),
    ("model._target_=hooktrain.models.MLP", r"`model.in_channels` is not an argument of hooktrain.models.MLP; .* start from an empty one with `'~model' \+model._target_=hooktrain.models.MLP`"),
    ("model=chimera model.fixed.steps=[linear,mix,act,lin]", r"`model.fixed.steps` must name modules of this chain \(linear, mix, act\)"),
    ("init=[{weight:xavier}]", r"`init\[0\].weight`: there is no scheme 'xavier'; choose one of xavier_uniform, "),
    ("init=[{types:[Linear],weight:normal,args:{sd:1}}]", r"`init\[0\].args.sd` is not an argument of nn.init.normal_; it takes mean, std"),
    ("init=[{types:[LSTM],weight:orthogonal}]", r"`init\[0\].types`: no module of the model is a 'LSTM'"),
    ("task.param_groups=[{targets:[nope],lr:0.1}]", r"`task.param_groups\[0\].targets`: pattern 'nope' matches no module"),
    ("task.param_groups=[{targets:[features.*],lrr:0.1}]", r"`task.param_groups\[0\].lrr` is not a setting of Adam; its settings are lr, "),
]


def run(case: str, tmp: Path) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp / "run"
    args = case.split(" ")
    if not any(arg.startswith("hydra.run.dir=") for arg in args):
        args.append(f"hydra.run.dir={run_dir}")
    command = [sys.executable, "train.py", "trainer.enable_progress_bar=false", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300), run_dir


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case, two at a time (each is a fresh Python process)."""
    tmp = [tmp_path_factory.mktemp("bad") for _ in CASES]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip((case for case, _ in CASES), pool.map(run, [case for case, _ in CASES], tmp)))


@pytest.mark.slow
@pytest.mark.parametrize("case,message", CASES, ids=[case for case, _ in CASES])
def test_bad_input_gets_one_sentence_and_loses_nothing(outcomes, case, message):
    import re

    result, run_dir = outcomes[case]
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    assert "Traceback" not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last
    written = sorted(path.name for path in run_dir.iterdir()) if run_dir.exists() else []
    assert set(written) <= {".hydra", "train.log"}, written  # Hydra's own record of the attempt, nothing of a run


def test_the_cases_outnumber_the_issue_by_twenty():
    assert len(CASES) >= 13 + 20
