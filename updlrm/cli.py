"""The `updlrm` command. Each subcommand lives in its own module under updlrm/commands/ and
exposes ``add_parser(subparsers)``, which registers its arguments and sets ``func``."""

from __future__ import annotations

import argparse
import importlib
import sys

# name of the module in updlrm.commands for each subcommand, in help order
SUBCOMMANDS = ["demo", "bench", "partition", "trace", "serve", "loadtest", "emu"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="updlrm",
        description="DLRM inference with the embedding layer on (emulated) UPMEM DPUs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"updlrm.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"updlrm.commands.{name}":
                continue  # subcommand not shipped in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
