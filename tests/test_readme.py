"""README figures that must not drift silently: the test count, and the TensorBoard tags its Dashboards table names."""

import re
from fnmatch import fnmatchcase

import pytest

from conftest import ROOT, every_plugin, run_cli
from hooktrain import train
from test_train import read_events

README = (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_the_readme_states_the_collected_test_count():
    collected = run_cli("-m", "pytest", "--collect-only", "-q")
    count = int(re.search(r"(\d+) tests? collected", collected.stdout).group(1))
    stated = int(re.search(r"`make test` runs `python -m pytest`: (\d+) tests", README).group(1))
    assert stated == count


def test_the_readme_states_how_many_bad_inputs_are_tried():
    from test_bad_inputs import CASES

    assert f"`tests/test_bad_inputs.py` runs {len(CASES)}\nbad inputs" in README


def test_every_tag_the_dashboards_table_names_is_written(make_cfg, tmp_path):
    table = README[README.index("## Dashboards") : README.index("A real run with every plugin")]
    named = {tag for tag in re.findall(r"`([a-z_*<>]+(?:/[a-z_*<>.]+)+)`", table)}
    assert len(named) >= 8, named
    train(make_cfg("model=lenet", *every_plugin()))
    events = read_events(tmp_path / "tensorboard")
    written = [tag for kind in ("scalars", "histograms", "images") for tag in events.Tags()[kind]]
    for tag in named:
        pattern = re.sub(r"<[a-z_]+>", "*", tag)  # <module>, <plugin>, <stat>: any; a chart name: its tags
        assert any(fnmatchcase(written_tag, pattern) or written_tag.startswith(pattern + "/") for written_tag in written), (
            f"README names {tag}, no run writes it"
        )
