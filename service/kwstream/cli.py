"""Entry point of the ``kwstream`` command.

Errors that kwstream expects (bad files, bad values, missing devices) print one line on stderr
and exit with status 2; stdout carries only event lines.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kwstream import __version__
from kwstream.commands import command_modules
from kwstream.errors import KwstreamError

log = logging.getLogger("kwstream")

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kwstream",
        description="Streaming keyword spotting: run, replay and score an int8 TFLite model.",
    )
    parser.add_argument("--version", action="version", version=f"kwstream {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of the log lines written to stderr (default INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules():
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A command with actions (``streams make``) names the action too, as argparse does.
    action = getattr(args, f"{args.command}_command", None)
    command = f"kwstream {args.command}" + (f" {action}" if action else "")
    try:
        return int(args.handler(args))
    except KwstreamError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        # A file or folder that cannot be created or written (a path through a file, a full
        # disk, no permission): the system's message names the path.
        print(f"{command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
