"""The code of the docs runs as the pages say: the plugin of docs/writing-plugins.md, the README's plain loop."""

import re
import types
from pathlib import Path

import yaml

import torch

from hooktrain.models import MLP, LeNet
from test_session import fit

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "writing-plugins.md").read_text()
README = (ROOT / "README.md").read_text()


def test_the_documented_plugin_trains_logs_and_keeps_its_buffer():
    source = re.search(r"```python\n(\"\"\"output_norm.*?)```", PAGE, re.S).group(1)
    module = types.ModuleType("output_norm")
    exec(compile(source, "docs/writing-plugins.md", "exec"), module.__dict__)
    settings = yaml.safe_load(re.search(r"```yaml\n(.*?)```", PAGE, re.S).group(1))["output_norm"]
    assert settings.pop("_target_") == "plugins.output_norm.OutputNorm"

    plugin = module.OutputNorm(name="output_norm", **{**settings, "every_n_steps": 1, "scale": 2.0})
    model = MLP(in_features=16, hidden_sizes=[8], num_classes=3)
    seen = {"fc1": [], "head": []}  # a plain reference hook: every output norm of every step
    for name in seen:
        getattr(model, name).register_forward_hook(lambda m, a, output, name=name: seen[name].append(output.detach().norm()))
    task, _ = fit([plugin], steps=3, model=model)
    expected = torch.stack([2.0 * torch.stack(seen[name]).max() for name in ("fc1", "head")])
    torch.testing.assert_close(task.state_dict()["plugin_state.output_norm.largest"], expected)


def test_the_readme_plain_loop_runs_plugins_and_writes_tensorboard(tmp_path, monkeypatch):
    from test_train import read_events

    source = re.search(r"## Plugins in your own loop.*?```python\n(.*?)```", README, re.S).group(1)
    assert len(source.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)  # runs/plain is relative
    exec(compile(source, "README.md", "exec"), {})
    events = read_events(tmp_path / "runs" / "plain")
    for layer in ("fc1", "head"):  # the MLP's layers with parameters
        assert [event.step for event in events.Scalars(f"watch/grad_logger/grad_norm/{layer}")] == [0, 5, 10, 15]
    assert "watch/grad_logger/grad/fc1" in events.Tags()["histograms"]
    assert "custom_scalars__config__" in events.Tags()["tensors"]


def test_the_readme_notebook_snippet_reads_an_analyze_cache_and_plots(tmp_path, monkeypatch):
    """The snippet of "Look inside a trained model", on a cache analyze wrote for a trained LeNet's test split."""
    from hydra import compose, initialize_config_dir

    from hooktrain.analyze import analyze

    weights = tmp_path / "model.pt"
    torch.save(LeNet(in_channels=1, num_classes=10, image_size=32).state_dict(), weights)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"paths.output_dir={tmp_path / 'analysis'}", f"ckpt_path={weights}", "plugins=[activation_cache]"])
    analyze(cfg)
    source = re.search(r"## Look inside a trained model.*?```python\n(.*?)```", README, re.S).group(1)
    assert len(source.strip().splitlines()) <= 12
    source = source.replace("outputs/analyze/<date>/<time>", str(tmp_path / "analysis"))
    monkeypatch.chdir(tmp_path)
    exec(compile(source, "README.md", "exec"), {})
    assert (tmp_path / "fc1_by_digit.png").stat().st_size > 1000
