"""The benchmark's estimator, its goal checks, and one tiny real run of every variant."""

import json

import pytest

from hooktrain import bench
from hooktrain.bench import all_variants, calls_per_step, check_goals, compose_cfg, engine_and_plugins, main, robust_step_time, selected_plugins
from hooktrain.registry import training_plugins

from conftest import ROOT


def test_step_time_drops_a_disturbed_run_and_keeps_periodic_work():
    runs = [
        [1.2, 1.2, 6.0, 1.2],  # a run the machine slowed down throughout
        [1.0, 9.0, 5.0, 1.0],  # a stall at step 1
        [1.0, 1.0, 5.0, 1.0],  # step 2 is a logging step in every run
    ]
    assert robust_step_time(runs) == pytest.approx((1 + 1 + 5 + 1) / 4)


def test_goals_read_the_right_ratios():
    def row(variant, vs_raw, vs_engine=None, **extra):
        return {"model": "lenet", "variant": variant, "vs_raw": vs_raw, **({"vs_engine": vs_engine} if vs_engine else {}), **extra}

    rows = [
        row("raw", 1.0), row("lightning", 0.80),
        row("hooktrain", 0.85, 1.0, peak_mb=100.0), row("fabric", 0.96, 1.0),
        row("hooktrain+idle", 0.84, 1.009), row("fabric+logging", 0.88, 1.07),
        row("hooktrain+grad_clip", 0.8, 1.05), row("hooktrain+grad_logger", 0.7, 1.2),  # grad_logger only observes
        row("fabric+all", 0.6, 1.3), row("hooktrain+all", 0.5, 1.9, peak_mb=106.0),
        row("fabric+grad_clip,pruning", 0.7, 1.2), row("fabric+all-grad_logger", 0.6, 1.25),  # sets: no per-plugin goal
    ]
    goals = {goal["goal"]: (goal["value"], goal["holds"]) for goal in check_goals(rows, ["lenet"], ["grad_clip", "pruning"])}
    assert goals == {
        "Fabric engine without plugins >= 0.95x the raw loop's throughput": (0.96, True),
        "Trainer engine without plugins ahead of plain Lightning (throughput vs raw)": (0.85, True),
        "idle plugins cost <= 1% (hooktrain+idle / hooktrain)": (1.009, True),
        "logging plugins at default cadence cost <= 5% (fabric+logging / fabric)": (1.07, False),
        "a plugin acting on every step costs <= 8% (hooktrain+grad_clip / hooktrain)": (1.05, True),
        "every plugin together costs <= 25% (hooktrain+all / hooktrain)": (1.9, False),
        "every plugin together costs <= 25% (fabric+all / fabric)": (1.3, False),
        "peak memory with all plugins within 5% (hooktrain+all / hooktrain)": (1.06, False),
    }


def test_a_variant_name_reads_as_engine_and_plugins():
    assert engine_and_plugins("fabric+grad_clip") == ("fabric", "grad_clip")
    assert engine_and_plugins("hooktrain") == ("hooktrain", None)
    assert "fabric+idle" in all_variants(ROOT / "conf") and "hooktrain+pruning" in all_variants(ROOT / "conf")


def test_a_variant_can_name_any_set_of_plugins(tmp_path):
    conf, every = ROOT / "conf", training_plugins(ROOT / "conf")
    assert selected_plugins(conf, "nan_guard,grad_clip,nan_guard") == ["nan_guard", "grad_clip"]
    assert selected_plugins(conf, "all-grad_clip,weight_stats") == [name for name in every if name not in ("grad_clip", "weight_stats")]
    cfg = compose_cfg(conf, "mlp", "fabric+all-grad_clip", 10, str(tmp_path))
    assert sorted(cfg.plugins) == sorted(set(every) - {"grad_clip"}) and cfg.plugins.ablate.targets  # with ablate's example settings
    with pytest.raises(ValueError, match=r"'grad_clp' is not among the plugins that train \(.*grad_clip"):
        selected_plugins(conf, "all-grad_clp")
    with pytest.raises(ValueError, match=r"'patch' is not among the plugins that train"):  # it needs a trained model
        selected_plugins(conf, "grad_clip,patch")


@pytest.mark.slow
def test_a_tiny_benchmark_times_every_variant_and_writes_json_and_markdown(tmp_path, capsys):
    main(["--models", "mlp", "--repeats", "1", "--steps", "3", "--warmup", "1", "--no-memory", "--no-counts",
          "--config-dir", str(ROOT / "conf"), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    variants = [row["variant"] for row in report["rows"]]
    assert variants == all_variants(ROOT / "conf")
    assert all(row["step_ms"] > 0 and len(row["run_means_ms"]) == 1 and len(row["other_load_cores"]) == 1 for row in report["rows"])
    assert [row["vs_raw"] for row in report["rows"]][0] == 1.0
    end = {row["variant"]: row["fit_end_s"] for row in report["rows"]}
    assert end["raw"] < 0.01 < end["fabric+logging"] and end["fabric"] < end["fabric+logging"]  # the pictures are drawn at the end
    assert not any("peak memory" in goal["goal"] for goal in report["goals"])  # no memory goal without --memory
    assert (tmp_path / "bench.md").read_text() in capsys.readouterr().out


def test_variants_pick_what_is_timed_and_a_wrong_name_lists_the_choices(tmp_path, capsys, monkeypatch):
    readings = iter(["before the runs", "after them"])
    monkeypatch.setattr(bench, "_loadavg", lambda: next(readings))
    main(["--no-lockstep", "--models", "mlp", "--variants", "fabric", "--repeats", "1", "--steps", "2", "--warmup", "1", "--no-memory", "--no-counts",
          "--config-dir", str(ROOT / "conf"), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [row["variant"] for row in report["rows"]] == ["raw", "fabric"]  # raw always: every ratio is against it
    assert report["load_before"] == "before the runs"  # the machine as the benchmark found it, not as its runs left it
    assert not report["lockstep"] and "interleaved runs of 2 steps" in (tmp_path / "bench.md").read_text()
    with pytest.raises(SystemExit):
        main(["--variants", "fabrik", "--config-dir", str(ROOT / "conf"), "--out", str(tmp_path)])
    assert "unknown variant(s) fabrik (fabrik: not raw, lightning, hooktrain or fabric); choose from: raw lightning hooktrain" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--variants", "fabric+grad_clip,nan_gaurd", "raw+grad_clip", "hooktrain+", "--config-dir", str(ROOT / "conf"), "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert "fabric+grad_clip,nan_gaurd: 'nan_gaurd' is not among the plugins that train (" in error and "raw+grad_clip: 'raw' is not one of hooktrain, fabric" in error
    assert "hooktrain+: no plugins after '+'" in error
    with pytest.raises(SystemExit):  # a trainer group would turn the fabric variants into the Trainer engine, unseen
        main(["--variants", "fabric", "--config-dir", str(ROOT / "conf"), "--out", str(tmp_path), "trainer=gpu", "trainer.precision=32-true"])
    assert "trainer=gpu: the benchmark picks each variant's engine" in capsys.readouterr().err


def test_lockstep_times_the_variants_side_by_side_in_one_run(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "time_variant", None)  # no variant timed alone
    main(["--models", "mlp", "--variants", "hooktrain", "fabric+logging", "--repeats", "2", "--steps", "3", "--warmup", "1",
          "--no-memory", "--no-counts", "--config-dir", str(ROOT / "conf"), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == ["raw", "hooktrain", "fabric+logging"] and report["lockstep"]
    assert all(len(row["run_means_ms"]) == 2 and row["step_ms"] > 0 for row in rows.values())
    assert rows["fabric+logging"]["fit_end_s"] > rows["hooktrain"]["fit_end_s"]  # each fit's end timed alone: its pictures
    assert "rounds of the variants side by side, one step each in turn" in (tmp_path / "bench.md").read_text()


def test_calls_and_ops_per_step_show_what_each_engine_and_plugin_adds():
    counts = {variant: calls_per_step(ROOT / "conf", "mlp", variant, (), short=5, long=15) for variant in ("raw", "fabric", "hooktrain", "fabric+grad_clip")}
    python = {variant: count["python_calls"] for variant, count in counts.items()}
    ops = {variant: count["torch_ops"] for variant, count in counts.items()}
    assert 0.8 * python["raw"] < python["fabric"] < 1.2 * python["raw"] < 3 * python["raw"] < python["hooktrain"]  # about as many
    assert ops["raw"] <= ops["fabric"] < ops["fabric+grad_clip"]  # clipping 3 layers: a norm and a scaling each, at least
    assert ops["fabric+grad_clip"] - ops["fabric"] >= 3 * 3


def test_peak_memory_is_the_run_s_own_not_the_benchmark_process_s():
    """The run is measured in a child process; a large parent (a benchmark after many runs) must not show in it."""
    ballast = bytearray(b"\1") * (600 * 2**20)  # written, so resident
    peak = bench.peak_memory_mb(ROOT / "conf", "mlp", "hooktrain", 1, 2, ())
    assert 0 < peak < 400, peak  # the MLP's run adds about 60 MB here
    del ballast
