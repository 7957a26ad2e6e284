"""The settings that define a run, for TensorBoard's HParams tab: a few columns that tell runs apart."""

from omegaconf import DictConfig

MAX_SETTINGS = 25


def run_settings(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, object]:
    """Model, data, optimizer, schedule, batch, epochs, precision, seed, plugins, then every command-line override.

    At most 25, plain values only (TensorBoard's HParams takes numbers, strings and booleans).
    """

    def short(node: object) -> str | None:
        return node._target_.rsplit(".", 1)[-1] if isinstance(node, DictConfig) and "_target_" in node else None

    optimizer = cfg.task.get("optimizer") or {}
    settings: dict[str, object] = {
        "model": short(cfg.model), "data": short(cfg.data), "optimizer": short(optimizer),
        "lr": optimizer.get("lr"), "weight_decay": optimizer.get("weight_decay"), "scheduler": short(cfg.task.get("scheduler")),
        "batch_size": cfg.data.get("batch_size"), "max_epochs": cfg.trainer.get("max_epochs"),
        "precision": cfg.trainer.get("precision"), "seed": cfg.get("seed"), "compile": cfg.get("compile"),
        "plugins": ",".join(cfg.get("plugins") or {}) or "none",
    }
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if not key.startswith("hydra.") and key not in settings:
            settings[key] = value
    plain = {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in settings.items()}
    return dict(list(plain.items())[:MAX_SETTINGS])
