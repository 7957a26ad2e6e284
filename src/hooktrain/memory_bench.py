"""``python -m hooktrain.memory_bench``: resident memory over a long run with logging plugins active on every step.

Trains LeNet on the digits for ``--steps`` optimizer steps with ``activation_logger`` and
``grad_logger`` at ``every_n_steps=1`` (histograms, images and buffers on every step), samples the
process's resident memory every 100 steps, and prints the growth after ``--warmup`` steps. A plugin
that kept activations, gradients or graphs would grow it step after step.
"""

import argparse
import logging
import tempfile
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from hooktrain.bench import compose_cfg, quiet, rss_mb
from hooktrain.run import build_run


class MemorySampler(Callback):
    def __init__(self, every: int) -> None:
        self.every = every
        self.samples: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.samples.append((trainer.global_step, rss_mb()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hooktrain.memory_bench", description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--config-dir", type=Path, default=Path("conf"))
    args = parser.parse_args(argv)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as out_dir:
        every_step = ("plugins=[activation_logger,grad_logger]", "plugins.activation_logger.every_n_steps=1", "plugins.grad_logger.every_n_steps=1")
        run = build_run(compose_cfg(args.config_dir, "lenet", "hooktrain", args.steps, out_dir, extra=every_step))
        sampler = MemorySampler(every=100)
        run.trainer.callbacks.append(sampler)
        with quiet():
            run.trainer.fit(run.task, datamodule=run.datamodule)
    print("step  resident MB")
    for step, mb in sampler.samples:
        print(f"{step:5d}  {mb:8.1f}")
    after_warmup = next(mb for step, mb in sampler.samples if step >= args.warmup)
    final = sampler.samples[-1][1]
    growth = final / after_warmup - 1
    print(f"growth from step {args.warmup} to {sampler.samples[-1][0]}: {100 * growth:+.2f}% (goal: < 5%): {'holds' if growth < 0.05 else 'FAILS'}")


if __name__ == "__main__":
    main()
