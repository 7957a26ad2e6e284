"""Train a model with hook plugins: python train.py model=lenet plugins=[grad_logger] (see --help)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import hooktrain


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return hooktrain.run(cfg)  # the value of `optimized_metric`, for a sweeper (hparams_search=optuna)


if __name__ == "__main__":
    hooktrain.check_command_line(sys.argv[1:], config_dir=Path(__file__).parent / "conf")
    main()
