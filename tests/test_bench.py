"""The benchmark's estimator, its goal checks, and one tiny real run of every variant."""

import json

import pytest

from hooktrain.bench import check_goals, main, robust_step_time

from conftest import ROOT


def test_step_time_drops_a_random_stall_and_keeps_periodic_work():
    runs = [
        [1.0, 1.0, 5.0, 1.0],
        [1.0, 9.0, 5.0, 1.0],  # a stall of the machine at step 1, in one run only
        [1.0, 1.0, 5.0, 1.0],  # step 2 is a logging step in every run
    ]
    assert robust_step_time(runs) == pytest.approx((1 + 1 + 5 + 1) / 4)


def test_goals_read_the_right_ratios():
    def row(variant, vs_raw, vs_hooktrain, **extra):
        return {"model": "m", "variant": variant, "vs_raw": vs_raw, "vs_hooktrain": vs_hooktrain, **extra}

    rows = [
        row("hooktrain", 0.95, 1.0, peak_mb=100.0),
        row("hooktrain+idle", 0.94, 1.009),
        row("hooktrain+logging", 0.88, 1.07, peak_mb=101.0),
        row("hooktrain+all", 0.5, 1.9, peak_mb=106.0),
    ]
    goals = check_goals(rows, ["m"])
    assert [goal["value"] for goal in goals] == [1.009, 1.07, 0.95, 1.06]  # idle, logging, vs raw, memory
    assert [goal["holds"] for goal in goals] == [True, False, True, False]


@pytest.mark.slow
def test_a_tiny_benchmark_times_every_variant_and_writes_json_and_markdown(tmp_path, capsys):
    main(["--models", "mlp", "--repeats", "1", "--steps", "3", "--warmup", "1", "--no-memory",
          "--config-dir", str(ROOT / "conf"), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    variants = [row["variant"] for row in report["rows"]]
    assert variants[:3] == ["raw", "lightning", "hooktrain"]
    assert {"hooktrain+grad_logger", "hooktrain+logging", "hooktrain+all", "hooktrain+idle"} <= set(variants)
    assert all(row["step_ms"] > 0 and len(row["run_means_ms"]) == 1 for row in report["rows"])
    assert [row["vs_raw"] for row in report["rows"]][0] == 1.0
    assert len(report["goals"]) == 3  # no memory goal without --memory
    assert (tmp_path / "bench.md").read_text() in capsys.readouterr().out
