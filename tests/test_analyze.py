"""python -m hooktrain analyze: a trained LeNet's split through plugins, activations on disk, patching and ablation."""

import hashlib

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import FAST, ROOT, run_cli
from hooktrain import HookSession, HooktrainError, train
from hooktrain.analyze import analyze, load_weights
from hooktrain.models import LeNet
from plugins.activation_cache import ActivationCache
from plugins.patch import Patch

MODULES = ["features.conv1", "features.conv2", "classifier.fc1", "classifier.fc2", "classifier.fc3"]  # LeNet's selection


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet trained for 2 epochs (enough to be far above chance on the digits)."""
    out = tmp_path_factory.mktemp("trained")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=null", f"paths.output_dir={out}"])
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.8
    return out


def run_analyze(out, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"paths.output_dir={out}", *overrides])
    return analyze(cfg)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_models_test_figures_are_those_of_its_own_run_dropout_and_all(make_cfg, tmp_path):
    """The MLP has dropout: analyze must run the model in eval mode, as the Trainer tests it."""
    tested = train(make_cfg("model=mlp", "trainer.limit_test_batches=null", f"paths.output_dir={tmp_path / 'run'}"))
    analyzed = run_analyze(tmp_path / "analyze", "model=mlp", f"ckpt_path={tmp_path / 'run' / 'model.pt'}")
    assert analyzed["test/acc"] == pytest.approx(tested["test/acc"], abs=1e-6)
    assert analyzed["test/loss"] == pytest.approx(tested["test/loss"], rel=1e-5)


@pytest.mark.parametrize("checkpoint", ["checkpoints/best.ckpt", "model.pt"])
def test_activations_of_the_test_split_land_in_a_safetensors_file(trained, tmp_path, checkpoint, capsys):
    before = digest(trained / checkpoint)
    results = run_analyze(tmp_path, f"ckpt_path={trained / checkpoint}", "plugins=[activation_cache,activation_logger]")
    assert digest(trained / checkpoint) == before  # read, not written
    cached = load_file(tmp_path / "activations" / "test.safetensors")  # safetensors alone, no hooktrain
    assert set(cached) == {*MODULES, "labels", "inputs_index"}
    assert {len(tensor) for tensor in cached.values()} == {270}  # the test split, every key
    assert cached["inputs_index"].tolist() == list(range(270))
    assert cached["features.conv1"].shape == (270, 6, 28, 28)
    assert results["test/acc"] > 0.8
    assert results["watch/activation_logger/analyze/std/classifier.act3"] > 0  # at the ReLUs, activation_logger's default
    printed = capsys.readouterr().out
    assert "classifier.act3" in printed and "activation_logger/std" in printed and f"test/acc {results['test/acc']:.4f}" in printed


def test_gradients_at_each_output_are_kept_beside_the_outputs(trained, tmp_path):
    run_analyze(tmp_path, f"ckpt_path={trained / 'model.pt'}", "split=val", "plugins=[activation_cache]",
                "plugins.activation_cache.grads=true", "plugins.activation_cache.max_samples=100")
    cached = load_file(tmp_path / "activations" / "val.safetensors")
    assert set(cached) == {*MODULES, *[f"{name}.grad" for name in MODULES], "labels", "inputs_index"}
    assert {len(tensor) for tensor in cached.values()} == {100}
    # The gradient at the logits of a cross-entropy mean: (softmax - one-hot) / batch size, for the first batch of 32
    logits, labels = cached["classifier.fc3"][:32], cached["labels"][:32]
    expected = (logits.softmax(dim=1) - torch.nn.functional.one_hot(labels, 10)) / 32
    torch.testing.assert_close(cached["classifier.fc3.grad"][:32], expected, rtol=1e-4, atol=1e-6)


def test_patching_a_layer_with_its_own_activations_changes_nothing_and_with_another_inputs_breaks_it(trained, tmp_path):
    model_pt = trained / "model.pt"
    intact = run_analyze(tmp_path / "intact", f"ckpt_path={model_pt}", "plugins=[activation_cache]")
    run_analyze(tmp_path / "val", f"ckpt_path={model_pt}", "split=val", "plugins=[activation_cache]")
    own = run_analyze(tmp_path / "own", f"ckpt_path={model_pt}", "plugins=[patch]", "plugins.patch.targets=[classifier.fc2]",
                      f"plugins.patch.file={tmp_path / 'intact' / 'activations' / 'test.safetensors'}")
    other = run_analyze(tmp_path / "other", f"ckpt_path={model_pt}", "plugins=[patch]", "plugins.patch.targets=[classifier.fc2]",
                        f"plugins.patch.file={tmp_path / 'val' / 'activations' / 'val.safetensors'}")
    ablated = run_analyze(tmp_path / "ablated", f"ckpt_path={model_pt}", "plugins=[ablate]", "plugins.ablate.targets=[classifier.fc2]")
    assert own["test/acc"] == intact["test/acc"] > 0.8
    assert other["test/acc"] < 0.3 and ablated["test/acc"] < 0.3  # fc2 carries the answer: another input's, or none, is near chance


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([], r"`ckpt_path` is required"),
        (["model=mlp"], r"`ckpt_path`: .* holds another model"),
        (["split=holdout"], r"`split`: there is no split 'holdout'; choose one of test, val, train"),
        (["plugins=[activation_cache]", "plugins.activation_cache.max_bytes=1000"], r"`plugins.activation_cache.max_bytes`: keeping 270 samples"),
        (["plugins=[patch]", "plugins.patch.targets=[classifier.fc2]", "plugins.patch.file=missing.safetensors"], r"`plugins.patch.file`: no activation file"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(trained, tmp_path, overrides, message):
    ckpt = [] if not overrides else [f"ckpt_path={trained / 'model.pt'}"]
    with pytest.raises(HooktrainError, match=message):
        run_analyze(tmp_path, *ckpt, *overrides)
    assert not (tmp_path / "activations").exists() and not (tmp_path / "tensorboard").exists()


def test_a_patch_file_of_other_modules_or_fewer_samples_is_refused(trained, tmp_path):
    run_analyze(tmp_path / "cache", f"ckpt_path={trained / 'model.pt'}", "plugins=[activation_cache]",
                "plugins.activation_cache.targets=[classifier.fc2]", "plugins.activation_cache.max_samples=100")
    file = tmp_path / "cache" / "activations" / "test.safetensors"
    with pytest.raises(HooktrainError, match=r"holds no activations of \['classifier.fc1'\]; it holds \['classifier.fc2'\]"):
        run_analyze(tmp_path / "a", f"ckpt_path={trained / 'model.pt'}", "plugins=[patch]", "plugins.patch.targets=[classifier.fc1]", f"plugins.patch.file={file}")
    with pytest.raises(HooktrainError, match=r"holds 100 samples, the test split has 270"):
        run_analyze(tmp_path / "b", f"ckpt_path={trained / 'model.pt'}", "plugins=[patch]", "plugins.patch.targets=[classifier.fc2]", f"plugins.patch.file={file}")
    assert not (tmp_path / "b" / "tensorboard").exists()


def test_training_snapshots_every_n_steps(make_cfg, tmp_path):
    train(make_cfg("model=mlp", "plugins=[activation_cache]", "plugins.activation_cache.phases=[train]",
                   "plugins.activation_cache.every_n_steps=2", "plugins.activation_cache.targets=[fc1]"))
    snapshots = sorted(path.name for path in (tmp_path / "activations").iterdir())
    assert snapshots == ["step_0.safetensors", "step_2.safetensors"]  # 4 steps
    step = load_file(tmp_path / "activations" / "step_2.safetensors")
    assert set(step) == {"fc1", "labels"} and step["fc1"].shape == (32, 128) and len(step["labels"]) == 32


def test_in_a_plain_loop_a_batch_is_a_step_a_shared_module_keeps_its_first_call_and_gradients_are_true(tmp_path):
    """No engine marks the batches here: each step is one. Under a GradScaler the kept gradients are the unscaled ones."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(4, 2))  # "0" runs twice a batch
    plugin = ActivationCache(name="activation_cache", phases=["train"], grads=True, max_samples=3, targets=["0", "3"])
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 1])
    with HookSession(model, [plugin]) as session:
        session.info.output_dir = tmp_path
        for step, scaler in enumerate((None, torch.amp.GradScaler("cpu", init_scale=2.0**10))):
            with session.step(step):
                session.info.scaler = scaler
                loss = F.cross_entropy(model(x), y)
                (scaler.scale(loss) if scaler else loss).backward()
    first = shared(x).detach()
    unscaled, scaled = (load_file(tmp_path / "activations" / f"step_{step}.safetensors") for step in (0, 1))
    for kept in (unscaled, scaled):
        assert {key: tuple(value.shape) for key, value in kept.items()} == {"0": (3, 4), "0.grad": (3, 4), "3": (3, 2), "3.grad": (3, 2)}
        torch.testing.assert_close(kept["0"], first)
    torch.testing.assert_close(scaled["3.grad"], unscaled["3.grad"])


def test_the_size_check_counts_the_gradients_too(tmp_path):
    plugin = ActivationCache(name="activation_cache", phases=["train"], grads=True, max_samples=10, max_bytes=10 * 4 * 4 + 1)
    with HookSession(nn.Sequential(nn.Linear(4, 4)), [plugin]) as session:  # outputs alone: 160 bytes
        session.info.output_dir = tmp_path
        with pytest.raises(HooktrainError, match=r"needs at least 320 bytes \(module '0': 32 per sample\), over max_bytes=161"):
            with session.step(0):
                session.model(torch.randn(10, 4))


def test_patch_finds_each_sample_by_its_position_whatever_the_order_of_the_file(tmp_path):
    stored = torch.arange(6.0).reshape(3, 2)
    save_file({"0": stored, "inputs_index": torch.tensor([3, 0, 2])}, str(tmp_path / "cache.safetensors"))  # no sample 1
    plugin = Patch(name="patch", file=str(tmp_path / "cache.safetensors"), targets=["0"], phases=["train"])
    model = nn.Sequential(nn.Linear(2, 2))
    with HookSession(model, [plugin]) as session:
        with session.step(0):
            session.info.sample_index = torch.tensor([0, 2, 3])
            assert torch.equal(model(torch.zeros(3, 2)), stored[[1, 2, 0]])
        with pytest.raises(HooktrainError, match=r"cache.safetensors' lacks some samples of this batch; cache the whole split"):
            with session.step(1):
                session.info.sample_index = torch.tensor([1])
                model(torch.zeros(1, 2))


@pytest.mark.slow
def test_the_command_line_runs_and_refuses_in_one_sentence(trained, tmp_path):
    result = run_cli("-m", "hooktrain", "analyze", f"ckpt_path={trained / 'model.pt'}", "plugins=[activation_cache]", f"hydra.run.dir={tmp_path / 'ok'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/acc" in result.stdout and (tmp_path / "ok" / "activations" / "test.safetensors").is_file()
    result = run_cli("-m", "hooktrain", "analyze", f"ckpt_path={trained / 'model.pt'}", "splt=val", f"hydra.run.dir={tmp_path / 'bad'}")
    assert result.returncode == 1 and result.stderr.strip() == "error: `splt` is not a setting of the config; did you mean `split`? (to add a new key on purpose: +splt=...)"
    help_text = run_cli("-m", "hooktrain", "analyze", "--help").stdout
    assert "analyze is powered by Hydra" in help_text and "plugins: ablate, activation_cache" in help_text and "split: test" in help_text
    result = run_cli("-m", "hooktrain", "analyze", f"ckpt_path={trained / 'model.pt'}", cwd=tmp_path)
    assert result.returncode == 1 and "run python -m hooktrain analyze from the project's folder" in result.stderr


def test_a_pruned_checkpoint_loads_with_its_masks_multiplied_out(trained, tmp_path):
    weights = torch.load(trained / "model.pt", weights_only=True)
    kept = weights["classifier.fc1.weight"].abs() > 0.05
    state = {f"model.{key}": value for key, value in weights.items() if key != "classifier.fc1.weight"}
    state |= {"model.classifier.fc1.weight_orig": weights["classifier.fc1.weight"], "model.classifier.fc1.weight_mask": kept.float(),
              "plugin_state.pruning.target_sparsity": torch.tensor(0.5)}
    torch.save({"state_dict": state}, tmp_path / "pruned.ckpt")  # the layout pruning leaves in last.ckpt
    model = LeNet(in_channels=1, num_classes=10, image_size=32)
    load_weights(model, str(tmp_path / "pruned.ckpt"))
    assert torch.equal(model.classifier.fc1.weight, weights["classifier.fc1.weight"] * kept)
    assert torch.equal(model.features.conv1.weight, weights["features.conv1.weight"])
