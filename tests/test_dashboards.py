"""A real run read back through a real TensorBoard server's HTTP API, as the browser reads it: no mock."""

import json
import urllib.parse
import urllib.request

import pytest

from conftest import every_plugin
from hooktrain import train
from hooktrain.screenshots import free_port, start_tensorboard

STEPS = 20  # 2 epochs of 10 batches


def get(port: int, path: str, **query: str):
    url = f"http://127.0.0.1:{port}/data/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
    return body if path.endswith("individualImage") else json.loads(body)


def post(port: int, path: str, payload: dict):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/data/{path}", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A LeNet run with every plugin (logging every 2 steps), and a TensorBoard server on its logs."""
    from hydra import compose, initialize_config_dir

    from conftest import FAST, ROOT

    out = tmp_path_factory.mktemp("run")
    overrides = [*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=10", f"paths.output_dir={out}", "model=lenet",
                 *every_plugin(every_n_steps=2, log_every_n_steps=2), "plugins.pruning.amount=0.5"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        metrics = train(compose("train", overrides=overrides))
    port = free_port()
    server = start_tensorboard(out / "tensorboard", port)
    yield port, metrics
    server.kill()


@pytest.mark.slow
def test_scalars_tell_the_runs_story_once_and_nothing_constant_or_repeated(served):
    port, metrics = served
    (run,) = get(port, "runs")
    tags = get(port, "plugin/scalars/tags")[run]
    test_acc = get(port, "plugin/scalars/scalars", run=run, tag="test/acc")
    assert [(step, value) for _, step, value in test_acc] == [(STEPS, pytest.approx(metrics["test/acc"]))]  # once, at the last step
    assert "lr-Adam" in tags and "val/acc_best" in tags and "train/loss" in tags
    # TensorBoard orders groups by name and opens the first ones: the run's, then every plugin's under watch/
    assert sorted({tag.split("/")[0] for tag in tags}) == ["epoch", "lr-Adam", "test", "train", "val", "watch"]
    assert not [tag for tag in tags if "/ema_" in tag], "running averages are buffers, not charts"
    assert not [tag for tag in tags if tag.startswith(("watch/activation_logger/min/", "watch/activation_logger/saturated_fraction/"))]  # ReLUs
    assert "watch/grad_clip/pre_clip_norm/features.conv1" not in tags  # grad_logger's grad_norm says it
    for layer in ("features.act1", "features.act2", "classifier.act3", "classifier.act4"):
        last = get(port, "plugin/scalars/scalars", run=run, tag=f"watch/activation_logger/out_of_range/{layer}")[-1]
        assert last[1] == STEPS - 2 and last[2] <= 0.05, (layer, last)
    shares = [value for _, _, value in get(port, "plugin/scalars/scalars", run=run, tag="watch/overhead_share/activation_logger")]
    assert shares and all(0 < share < 1 for share in shares)


@pytest.mark.slow
def test_pictures_and_histograms_are_served(served):
    port, _ = served
    (run,) = get(port, "runs")
    images = get(port, "plugin/images/tags")[run]
    for tag in ("watch/activation_logger/over_time/classifier.act3", "watch/activation_logger/by_layer/dead_fraction", "watch/grad_logger/by_layer/grad_norm",
                "watch/weight_stats/by_layer/update_ratio", "watch/pruning/by_layer/sparsity"):
        assert tag in images, tag
    entries = get(port, "plugin/images/images", run=run, tag="watch/grad_logger/by_layer/grad_norm", sample="0")
    assert entries[-1]["step"] == STEPS - 2  # the last picture shows the last logging step
    query = dict(urllib.parse.parse_qsl(entries[-1]["query"]))
    png = get(port, "plugin/images/individualImage", **query)
    assert png.startswith(b"\x89PNG") and int.from_bytes(png[16:20], "big") > 400  # the PNG header's width
    histograms = get(port, "plugin/histograms/tags")[run]
    for tag in ("watch/grad_logger/param_grad/classifier.fc1", "watch/weight_stats/weight/classifier.fc1", "watch/activation_logger/activation/classifier.act3"):
        assert tag in histograms, tag
    (_, step, buckets), *_ = get(port, "plugin/histograms/histograms", run=run, tag="watch/weight_stats/weight/classifier.fc1")
    assert step == 0 and sum(count for _, _, count in buckets) == 120 * 400 + 120  # every weight and bias of fc1


@pytest.mark.slow
def test_custom_scalars_and_hparams_are_served(served):
    port, _ = served
    layout = get(port, "plugin/custom_scalars/layout")
    titles = {chart["title"] for category in layout["category"] for chart in category["chart"]}
    assert {"grad_norm", "overhead_share", "clipped_fraction"} <= titles
    story = layout["category"][0]
    assert story["title"] == "run" and [chart["title"] for chart in story["chart"]] == ["loss", "accuracy", "learning rate"]
    experiment = post(port, "plugin/hparams/experiment", {"experimentName": ""})
    settings = [info["name"] for info in experiment["hparamInfos"]]
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert len(settings) <= 25 and {"model", "optimizer", "lr", "plugins"} <= set(settings)
    # the tab ticks five settings, those marked as differing first: the ones that define the run
    assert settings[:5] == ["data", "lr", "model", "optimizer", "plugins"]
    assert [info["name"] for info in experiment["hparamInfos"] if info.get("differs")] == settings[:5]
    assert metrics == {"val/acc_best", "test/acc", "test/loss"}
