"""The ``videomac`` command. Each subcommand is one thin module of this package (parse the arguments,
call one library function, print); the library functions live in their subsystems."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
# taking the parsed args and returning an exit code.
_COMMANDS = ["pretrain", "visualize", "export", "push", "convert", "eval", "propagate", "bench", "prepare"]


def build_parser() -> argparse.ArgumentParser:
    from videomac.version import __version__

    parser = argparse.ArgumentParser(
        prog="videomac", description="VideoMAC: masked video modeling with sparse ConvNets."
    )
    parser.add_argument("--version", action="version", version=f"videomac {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"videomac.cli.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
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
    except (FileNotFoundError, ValueError) as e:
        print(f"videomac {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unreadable or truncated files (PIL's UnidentifiedImageError is one), a full disk
        print(f"videomac {args.command}: error: {e or type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
