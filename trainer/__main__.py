"""``python -m trainer {vae, unet, eval, show-config, synth} ...`` (also under ``accelerate launch -m trainer``).

    python -m trainer vae  --config configs/metricgold_sd2_vae.yaml [--set section.field=value ...] [--resume latest]
    python -m trainer unet --config configs/metricgold_sd2.yaml     [--set ...] [--resume latest|CHECKPOINT]
    python -m trainer eval --model DIR --dataset nyuv2|kitti|folder --data-root PATH [...]
    python -m trainer show-config [CONFIG] [--set ...]
    python -m trainer synth --out DIR --count N ...          (same as python -m trainer.synth)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _train_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m trainer {stage}",
                                     description=f"MetricGold training, {stage} stage")
    parser.add_argument("--config", help="YAML config (see configs/ and `python -m trainer show-config`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-5 (repeatable)")
    parser.add_argument("--output-dir", help="shortcut for --set run.output_dir=DIR")
    parser.add_argument("--max-steps", type=int, help="shortcut for --set run.max_steps=N")
    parser.add_argument("--resume", help="'latest' (newest checkpoint in output_dir, if any) or a checkpoint folder")
    return parser


def _train(stage: str, argv: Sequence[str]) -> int:
    from .config import ConfigError, load_config
    from .train import TrainingDiverged, train

    args = _train_parser(stage).parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"run.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"run.max_steps={args.max_steps}")
    try:
        cfg = load_config(args.config, overrides)
        final = train(cfg, stage, resume=args.resume)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"{stage} stage done: MetricGold checkpoint at {final}", file=sys.stderr)
    return 0


def _show_config(argv: Sequence[str]) -> int:
    from .config import ConfigError, dump_config, load_config

    parser = argparse.ArgumentParser(prog="python -m trainer show-config",
                                     description="print a resolved config with every field documented")
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        print(dump_config(load_config(args.config, args.overrides)), end="")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("vae", "unet", "eval", "show-config", "synth")
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, rest = argv[0], argv[1:]
    if command in ("vae", "unet"):
        return _train(command, rest)
    if command == "eval":
        from .eval import main as eval_main

        return eval_main(rest)
    if command == "synth":
        from .synth.__main__ import main as synth_main

        return synth_main(rest)
    return _show_config(rest)


if __name__ == "__main__":
    sys.exit(main())
