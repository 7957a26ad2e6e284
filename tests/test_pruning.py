"""pruning: the schedule, each method's masks, checkpoints, resume and the exported model."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from lightning.pytorch.callbacks import Callback
from torch import nn

from hooktrain import HooktrainError, train
from hooktrain.models import MLP
from hooktrain.run import build_run
from hooktrain.session import HookSession
from plugins.pruning import METHODS, Pruning, cubic_sparsity, kth_smallest, lowest
from test_session import fit


def test_cubic_schedule_of_zhu_and_gupta():
    assert cubic_sparsity(0, 0.9, start=10, end=110) == 0.0
    assert cubic_sparsity(60, 0.9, start=10, end=110) == pytest.approx(0.9 * (1 - 0.5**3))
    assert cubic_sparsity(110, 0.9, start=10, end=110) == pytest.approx(0.9)
    assert cubic_sparsity(500, 0.9, start=10, end=110) == pytest.approx(0.9)


def setup_plugin(method, **kwargs):
    torch.manual_seed(0)
    model = MLP(in_features=6, hidden_sizes=[8], num_classes=4)
    plugin = Pruning(name="pruning", method=method, start=0, end=1, **kwargs)
    state = nn.Module()
    plugin.setup(state, {"fc1": model.fc1, "head": model.head})
    return plugin, state, model


@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured", "global_unstructured"])
def test_unstructured_masks_reach_the_target_and_never_regrow(method):
    plugin, state, model = setup_plugin(method, amount=0.75)
    plugin.info.step = 0  # one step done: with end=1, the full amount
    first = plugin.update(state, {})
    masks = [model.fc1.weight_mask.clone(), model.head.weight_mask.clone()]
    assert first["overall_sparsity"].item() == pytest.approx(0.75, abs=0.02)
    if method != "global_unstructured":
        assert first["sparsity"].tolist() == pytest.approx([0.75, 0.75], abs=0.02)
    assert first["sparsity"].tolist() == pytest.approx([1 - mask.mean().item() for mask in masks])  # what the masks hold
    assert first["overall_sparsity"].item() == pytest.approx(1 - sum(mask.sum().item() for mask in masks) / sum(mask.numel() for mask in masks))
    plugin.update(state, {})
    for mask, module in zip(masks, (model.fc1, model.head)):
        assert (module.weight_mask <= mask).all()  # a pruned weight stays pruned


def test_masks_are_recomputed_while_the_target_moves_and_stats_come_on_logging_steps(monkeypatch):
    plugin, state, model = setup_plugin("global_unstructured", amount=0.5, log_every_n_steps=2)
    targets = []
    new_masks = plugin._new_masks
    monkeypatch.setattr(plugin, "_new_masks", lambda target, *current: targets.append(target) or new_masks(target, *current))
    logged = []
    for step in range(4):  # end=1: the full amount from step 0 on
        plugin.info.step = step
        logged.append(sorted(plugin.update(state, {})))
    assert targets == [0.5]
    assert logged == [["overall_sparsity", "sparsity", "target_sparsity"], [], ["overall_sparsity", "sparsity", "target_sparsity"], []]
    fresh = MLP(in_features=6, hidden_sizes=[8], num_classes=4)  # the same plugin set up again, for another fit
    plugin.setup(state := nn.Module(), {"fc1": fresh.fc1, "head": fresh.head})
    plugin.update(state, {})
    masks = (fresh.fc1.weight_mask, fresh.head.weight_mask)
    assert targets == [0.5, 0.5]
    assert 1 - sum(mask.sum() for mask in masks).item() / sum(mask.numel() for mask in masks) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])  # NumPy's selection, and torch's where NumPy has no dtype
def test_the_threshold_is_the_kth_smallest_score_and_drops_exactly_count(dtype):
    scores = torch.randn(3, 1001).to(dtype)
    scores[0, :10] = 0.0  # pruned weights all score 0
    for k in (1, 7, 500, scores.numel()):
        assert kth_smallest(scores, k) == torch.kthvalue(scores.flatten(), k).values
        assert kth_smallest(scores, k).dtype == dtype and kth_smallest(scores, k).dim() == 0
    distinct = torch.randperm(5000).float().view(50, 100)
    assert (lowest(distinct, 37) == 0).sum() == 37 and distinct[lowest(distinct, 37) == 0].max() == 36


@pytest.mark.parametrize("method", ["global_unstructured", "ln_structured"])
def test_training_matches_torchs_own_pruning_hook_exactly(method):
    # The reference: torch.nn.utils.prune's forward pre-hook (weight = weight_orig * weight_mask at every forward), fed
    # the plugin's masks as they change. AdamW with weight decay and momentum moves pruned entries of weight_orig.
    torch.manual_seed(0)
    model = MLP(in_features=6, hidden_sizes=[8], num_classes=4)
    reference = copy.deepcopy(model)
    layers = ("fc1", "head")
    for name in layers:
        prune.identity(getattr(reference, name), "weight")
    plugin = Pruning(name="pruning", method=method, amount=0.6, start=0, end=6, every_n_steps=2, targets=list(layers))
    session = HookSession(model, [plugin]).setup()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1) for m in (model, reference)]
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    for step in range(10):
        with session.step(step):
            for net in (model, reference):
                F.cross_entropy(net(x), y).backward()
            session.before_optimizer_step()
            for name in layers:
                ours, torchs = getattr(model, name), getattr(reference, name)
                assert torch.equal(ours.weight_orig.grad, torchs.weight_orig.grad), f"step {step}: {name}'s gradient"
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad()
        for name in layers:
            ours, torchs = getattr(model, name), getattr(reference, name)
            torchs.weight_mask.copy_(ours.weight_mask)  # the plugin's new masks, if any, for torch's next forward
            assert torch.equal(ours.weight, ours.weight_orig * ours.weight_mask), f"step {step}: {name} has pruned weights left"
            assert torch.equal(ours.weight, torchs.weight_orig * torchs.weight_mask), f"step {step}: {name} trained differently"
    assert not any(getattr(model, name)._forward_pre_hooks for name in layers)  # torch's hook is gone: the saving
    assert (model.fc1.weight_mask == 0).float().mean() > 0.3
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_a_loaded_state_dict_is_masked_as_it_loads_and_a_torch_pruned_layer_keeps_its_mask():
    torch.manual_seed(0)
    model = MLP(in_features=6, hidden_sizes=[8], num_classes=4)
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)  # pruned by torch before: its hook and its mask
    mask = model.fc1.weight_mask.clone()
    stale = {key: value.clone() for key, value in model.state_dict().items()}  # weight_orig holds values where the mask is 0
    plugin = Pruning(name="pruning", targets=["fc1"])
    plugin.setup(nn.Module(), {"fc1": model.fc1})
    assert not model.fc1._forward_pre_hooks and torch.equal(model.fc1.weight_mask, mask)
    assert model.fc1.weight is model.fc1.weight_orig and (model.fc1.weight[mask == 0] == 0).all()
    model.load_state_dict(stale)
    assert (stale["fc1.weight_orig"][mask == 0] != 0).all() and (model.fc1.weight[mask == 0] == 0).all()
    plugin.setup(nn.Module(), {"fc1": model.fc1})  # a second setup adds no second load hook
    assert len(model.fc1._load_state_dict_post_hooks) == 1


@pytest.mark.parametrize("method", METHODS)
def test_a_layer_pruned_before_keeps_its_mask_while_the_target_is_still_zero(method):
    torch.manual_seed(0)
    model = MLP(in_features=6, hidden_sizes=[8], num_classes=4)
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    mask = model.fc1.weight_mask.clone()
    plugin = Pruning(name="pruning", method=method, targets=["fc1"], start=5, end=10)
    plugin.setup(state := nn.Module(), {"fc1": model.fc1})
    for step in range(3):  # before `start`: a target of 0, which must not give the pruned weights back
        plugin.info.step = step
        plugin.update(state, {})
        assert torch.equal(model.fc1.weight_mask, mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparsity_of_a_half_precision_layer_is_counted_exactly(dtype):
    layer = nn.Linear(400, 400).to(dtype)  # 112,000 weights kept: past float16's largest number, 65,504
    plugin = Pruning(name="pruning", method="l1_unstructured", amount=0.3, start=0, end=1)
    plugin.setup(state := nn.Module(), {"layer": layer})
    logged = plugin.update(state, {})  # 0.3 to float32's precision (bfloat16 holds 0.30078)
    assert logged["overall_sparsity"].item() == pytest.approx(0.3, abs=1e-6) and logged["sparsity"].tolist() == pytest.approx([0.3], abs=1e-6)


def test_l1_prunes_the_smallest_magnitudes():
    plugin, state, model = setup_plugin("l1_unstructured", amount=0.5)
    plugin.info.step = 0
    plugin.update(state, {})
    weight, mask = model.head.weight_orig.detach(), model.head.weight_mask
    assert weight[mask == 0].abs().max() <= weight[mask == 1].abs().min()


def test_global_prunes_by_one_threshold_across_layers():
    plugin, state, model = setup_plugin("global_unstructured", amount=0.5)
    plugin.info.step = 0
    plugin.update(state, {})
    kept = torch.cat([m.weight_orig.detach()[m.weight_mask == 1].abs() for m in (model.fc1, model.head)])
    pruned = torch.cat([m.weight_orig.detach()[m.weight_mask == 0].abs() for m in (model.fc1, model.head)])
    assert pruned.max() <= kept.min()


def test_ln_structured_prunes_whole_rows():
    plugin, state, model = setup_plugin("ln_structured", amount=0.5, dim=0)
    plugin.info.step = 0
    plugin.update(state, {})
    rows = model.fc1.weight_mask.sum(dim=1)
    assert set(rows.tolist()) == {0.0, 6.0} and (rows == 0).sum() == 4  # 4 of 8 output rows
    norms = model.fc1.weight_orig.detach().norm(dim=1)
    assert norms[rows == 0].max() <= norms[rows == 6].min()


def test_export_makes_pruning_permanent_and_keeps_the_training_masks():
    plugin, state, model = setup_plugin("l1_unstructured", amount=0.5)
    plugin.info.step = 0
    plugin.update(state, {})
    plain = plugin.export(model.state_dict())
    assert not any(key.endswith(("_orig", "_mask")) for key in plain)
    torch.testing.assert_close(plain["fc1.weight"], model.fc1.weight_orig * model.fc1.weight_mask)
    fresh = MLP(in_features=6, hidden_sizes=[8], num_classes=4)
    fresh.load_state_dict(plain)
    assert hasattr(model.fc1, "weight_mask")  # the trained model is untouched


def test_bad_values_are_named():
    with pytest.raises(HooktrainError, match=r"`plugins.p.amount` must be a number in \[0.0, 1.0\), got 1.0"):
        Pruning(name="p", amount=1.0)
    with pytest.raises(HooktrainError, match=r"`plugins.p.method` must be one of"):
        Pruning(name="p", method="magnitude")
    with pytest.raises(HooktrainError, match=r"`plugins.p.end` must be a step .* got -1"):
        Pruning(name="p", end=-1)
    with pytest.raises(HooktrainError, match=r"module 'act1' \(ReLU\) has no tensor 'weight'"):
        fit([Pruning(name="p", targets=["act1"])])


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_pruned_run_checkpoints_masks_resumes_the_schedule_and_exports_sparse_weights(make_cfg, tmp_path):
    settings = ["model=mlp", "plugins=[pruning]", "plugins.pruning.amount=0.8", "plugins.pruning.every_n_steps=1",
                "plugins.pruning.log_every_n_steps=1", "plugins.pruning.start=0", "plugins.pruning.end=6", "task.scheduler.T_max=2"]
    train(make_cfg(*settings))  # 4 steps of 8 over two epochs
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert {"model.fc1.weight_orig", "model.fc1.weight_mask", "plugin_state.pruning.target_sparsity"} <= set(state)
    assert state["plugin_state.pruning.target_sparsity"].item() == pytest.approx(cubic_sparsity(4, 0.8, 0, 6))

    train(make_cfg(*settings, "trainer.max_epochs=2", f"ckpt_path={last}"))
    state = torch.load(last, weights_only=True)["state_dict"]
    assert state["plugin_state.pruning.target_sparsity"].item() == pytest.approx(0.8)
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(key.endswith(("_orig", "_mask")) for key in weights)
    total = sum(weights[f"{name}.weight"].numel() for name in ("fc1", "fc2", "head"))
    zeros = sum((weights[f"{name}.weight"] == 0).sum().item() for name in ("fc1", "fc2", "head"))
    assert zeros / total == pytest.approx(0.8, abs=0.01)


def test_a_pruned_model_deep_copies_and_saves_between_steps():
    plugin, state, model = setup_plugin("l1_unstructured", amount=0.5)
    copy.deepcopy(model)  # right after setup, as weight-averaging callbacks do at fit start
    plugin.info.step = 0
    model(torch.randn(2, 6)).sum().backward()
    plugin.update(state, {})  # the end of an active step
    clone = copy.deepcopy(model)
    torch.save(model, io.BytesIO())
    torch.testing.assert_close(clone(torch.ones(1, 6)), model(torch.ones(1, 6)))


class MaskHistory(Callback):
    """Every selected layer's mask at the end of every training step of a real fit."""

    def __init__(self):
        self.masks = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.masks.append({name: m.weight_mask.clone() for name, m in pl_module.model.named_modules() if hasattr(m, "weight_mask")})


@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured", "ln_structured", "global_unstructured"])
def test_masks_never_regrow_over_a_real_schedule(make_cfg, method):
    # The main job's Adam with weight decay keeps moving pruned entries of weight_orig: a mask recomputed from them could regrow.
    run = build_run(make_cfg("model=mlp", "plugins=[pruning]", f"plugins.pruning.method={method}", "plugins.pruning.amount=0.8",
                             "plugins.pruning.start=0", "plugins.pruning.end=60", "plugins.pruning.every_n_steps=2",
                             "trainer.max_epochs=2", "trainer.limit_train_batches=null"))
    history = MaskHistory()
    run.trainer.callbacks.append(history)
    run.trainer.fit(run.task, datamodule=run.datamodule)
    assert len(history.masks) == 80
    for before, after in zip(history.masks, history.masks[1:]):
        for name in before:
            assert (after[name] <= before[name]).all(), f"{method}: a pruned weight of {name} came back"
    final = history.masks[-1]
    sparsity = 1 - sum(mask.sum() for mask in final.values()) / sum(mask.numel() for mask in final.values())
    if method == "ln_structured":  # whole rows: round(0.8 * rows) of each layer (fc1: 6 of 8 rows of 16, head: 2 of 3 rows of 8)
        expected = sum(round(0.8 * mask.shape[0]) * mask.shape[1] for mask in final.values()) / sum(m.numel() for m in final.values())
    else:
        expected = 0.8
    assert sparsity.item() == pytest.approx(expected, abs=0.01)
