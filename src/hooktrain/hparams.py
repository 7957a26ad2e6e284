"""The settings that define a run, for TensorBoard's HParams tab: a few columns that tell runs apart."""

from omegaconf import DictConfig

MAX_SETTINGS = 25
SHOWN_AT_FIRST = 5  # the HParams tab ticks five settings: those marked as differing between runs first, then by name


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
    for key, value in _overridden(overrides):
        settings.setdefault(key, value)
    plain = {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in settings.items()}
    return dict(list(plain.items())[:MAX_SETTINGS])


def shown_at_first(settings: dict[str, object], overrides: list[str] = ()) -> list[str]:
    """The settings the HParams tab shows before any click: what the command line changed, then model, plugins,
    optimizer, lr and data (TensorBoard marks them as differing between runs; it shows five)."""
    keys = [key for key, _ in _overridden(overrides)] + ["model", "plugins", "optimizer", "lr", "data"]
    return [key for key in dict.fromkeys(keys) if key in settings][:SHOWN_AT_FIRST]


def _overridden(overrides: list[str]) -> list[tuple[str, str]]:
    """``key=value`` of each command-line override but Hydra's own (``+``/``~`` dropped from the key)."""
    pairs = [override.partition("=")[::2] for override in overrides]
    return [(key.lstrip("+~"), value) for key, value in pairs if not key.lstrip("+~").startswith("hydra.")]
