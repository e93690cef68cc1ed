"""Command line of the ``ab`` package: ``python -m ab <command>``.

Each command is a subparser whose ``handler`` takes the parsed arguments and returns the exit
status; adding a command (``sidecar``, ``analyze`` ...) means adding one ``_add_<name>``
function to ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _stats(_args: argparse.Namespace) -> int:
    from ab import stats_cli  # imported here so other commands do not pay for scipy

    return stats_cli.run(sys.stdin, sys.stdout, sys.stderr)


def _add_stats(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stats",
        help="analyse one experiment metric: JSON request on stdin, JSON result on stdout",
        description=(
            "Read one JSON object on stdin (a two-arm test, {'srm': ...} or "
            "{'sample_size': ...}) and write one JSON object on stdout. "
            "See ab/stats_cli.py for the request shapes."
        ),
    )
    parser.set_defaults(handler=_stats)


_COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_stats,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ab`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="python -m ab", description="Experiment tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return its exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
