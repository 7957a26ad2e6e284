"""The plugin written in docs/writing-plugins.md works as the page says."""

import re
import types
from pathlib import Path

import yaml

from test_session import fit

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md").read_text()


def test_the_documented_plugin_trains_logs_and_keeps_its_buffer():
    source = re.search(r"```python\n(\"\"\"output_norm.*?)```", PAGE, re.S).group(1)
    module = types.ModuleType("output_norm")
    exec(compile(source, "docs/writing-plugins.md", "exec"), module.__dict__)
    settings = yaml.safe_load(re.search(r"```yaml\n(.*?)```", PAGE, re.S).group(1))["output_norm"]
    assert settings.pop("_target_") == "plugins.output_norm.OutputNorm"

    plugin = module.OutputNorm(name="output_norm", **{**settings, "every_n_steps": 2})
    task, _ = fit([plugin], steps=3)
    largest = task.state_dict()["plugin_state.output_norm.largest"]
    assert largest.shape == (2,) and (largest > 0).all()
