"""Step times read at the loader, alone and in turn: the benchmark's clock."""

import pytest
import torch

from hooktrain.stepclock import Stamps, in_turn


def fake_run(name: str, batches: int, log: list, *, no_grad_setup: bool = False, fail_at: int | None = None):
    """A training run as the loader sees it: set-up, then a batch handed out per step."""

    def run(stamps: Stamps) -> None:
        log.append(("set-up", name))
        if no_grad_setup:
            torch.set_grad_enabled(False)  # this run's own business: the others must not inherit it
        for step in range(batches):
            stamps.batch_handed_out()
            if fail_at == step:
                raise RuntimeError(f"{name} failed")
            log.append((name, step, torch.is_grad_enabled()))

    return run


def test_alone_a_step_ends_where_the_next_starts():
    stamps = Stamps()
    for _ in range(4):
        stamps.batch_handed_out()
    assert len(stamps) == 4 and stamps.ends == stamps.starts[1:]
    assert len(stamps.step_times(1)) == 2 and all(time >= 0 for time in stamps.step_times(1))


def test_in_turn_every_set_up_comes_first_then_one_step_of_each_in_turn():
    log = []
    stamps = in_turn({"a": fake_run("a", 3, log, no_grad_setup=True), "b": fake_run("b", 2, log)})
    assert log == [
        ("set-up", "a"), ("set-up", "b"),
        ("a", 0, False), ("b", 0, True), ("a", 1, False), ("b", 1, True), ("a", 2, False),  # b's end: a goes on alone
    ]
    steps = sorted((start, end) for run in stamps.values() for start, end in zip(run.starts, run.ends))
    assert all(end <= next_start for (_, end), (next_start, _) in zip(steps, steps[1:]))  # no step overlaps another's
    assert [len(stamps["a"].step_times(0)), len(stamps["b"].step_times(0))] == [2, 1]  # a last batch's step has no end
    assert torch.is_grad_enabled()  # the caller's mode, whatever the runs left


def test_in_turn_an_error_in_one_run_stops_all_and_reaches_the_caller():
    log = []
    with pytest.raises(RuntimeError, match="b failed"):
        in_turn({"a": fake_run("a", 5, log), "b": fake_run("b", 5, log, fail_at=1)})
    assert ("a", 2, True) not in log
