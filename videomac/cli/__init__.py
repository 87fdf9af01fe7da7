"""The ``videomac`` command. Each subcommand is one thin module of this package (parse the arguments,
call one library function, print); the library functions live in their subsystems.

Errors become one line and an exit code: 2 for bad input or usage (``ValueError``, ``FileNotFoundError``),
1 for other I/O errors (a full disk) and for library errors whose class sets ``exit_code``, 130 for Ctrl-C.
"""

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
    except Exception as e:
        # library errors that are the user's to act on declare their exit code (e.g. a training run that
        # failed: videomac.pretrain.train.TrainingError); anything else is a bug and keeps its traceback
        code = getattr(type(e), "exit_code", None)
        if not isinstance(code, int):
            raise
        print(f"videomac {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
