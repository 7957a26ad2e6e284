"""``python -m hooktrain plugins``: the plugins ``plugins=[...]`` accepts; ``python -m hooktrain analyze``: look inside a trained model."""

import argparse
from pathlib import Path

from hooktrain.errors import HooktrainError
from hooktrain.registry import available_plugins


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hooktrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("plugins", help="list the available plugins, their description and parameters")
    listing.add_argument("--config-dir", type=Path, default=Path("conf"), help="the config folder (default: ./conf)")
    analyzing = commands.add_parser(
        "analyze", help="run a data split through a trained model with plugins (Hydra overrides: ckpt_path=... plugins=[...])", add_help=False
    )
    analyzing.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides of conf/analyze.yaml, e.g. ckpt_path=<run>/model.pt")
    args, unknown = parser.parse_known_args(argv)
    if args.command == "analyze":  # Hydra's own flags (--help, --cfg job) go to Hydra
        from hooktrain.analyze import main as analyze  # imported here: it imports Hydra's app machinery

        return analyze([*unknown, *args.overrides], Path("conf"))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        plugins = available_plugins(args.config_dir)
    except HooktrainError as error:
        raise SystemExit(f"error: {error}") from None
    for info in plugins:
        print(f"{info.name}  ({info.target})\n    {info.description}")
        for parameter in info.parameters:
            print(f"      {parameter}")
    print(f"\nuse: python train.py plugins=[{','.join(info.name for info in plugins)}] plugins.<name>.<parameter>=<value>")


if __name__ == "__main__":
    main()
