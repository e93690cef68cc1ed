"""Command line of the ``ab`` package: ``recsys-ab <command>`` or ``python -m ab <command>``.

Each command is a subparser whose ``handler`` takes the parsed arguments and returns the exit
status; adding a command (``sidecar``, ``analyze`` ...) means adding one ``_add_<name>``
function to ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

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


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="PATH",
        help="the service's YAML config (its ab_testing and feature_store sections are used)",
    )


def _sidecar(args: argparse.Namespace) -> int:
    from ab import cli

    return cli.run_sidecar_command(args)


def _add_sidecar(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sidecar",
        help="run the experiment controller and its metrics endpoint until SIGTERM",
        description=(
            "Evaluate running experiments every ab_testing.controller.interval_s, roll back, "
            "promote or stop them, and serve Prometheus metrics on "
            "ab_testing.controller.metrics_port (default 9465)."
        ),
    )
    _config_argument(parser)
    parser.set_defaults(handler=_sidecar)


def _experiments(args: argparse.Namespace) -> int:
    from ab import cli

    return cli.run_experiments_command(args)


def _add_experiments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "experiments",
        help="list, show, re-weight, stop or roll back experiments (audited)",
        description=(
            "Operator actions; every change writes experiment_state and an audit row, and "
            "the gateways' routing applies it within seconds."
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _config_argument(actions.add_parser("list", help="every experiment with its status"))
    for name, help_text in (
        ("show", "config, status and decision history of one experiment"),
        ("set-weights", "override the traffic split, e.g. control=0.5 treatment=0.5"),
        ("stop", "disable the experiment (users get the default model)"),
        ("rollback", "send all of the experiment's traffic to its control"),
    ):
        action = actions.add_parser(name, help=help_text)
        _config_argument(action)
        action.add_argument("experiment", help="experiment name")
        if name == "set-weights":
            action.add_argument("weights", nargs="+", metavar="VARIANT=WEIGHT")
        if name != "show":
            action.add_argument("--reason", default="", help="recorded in the audit log")
    parser.set_defaults(handler=_experiments)


def _analyze(args: argparse.Namespace) -> int:
    from ab import cli

    return cli.run_analyze_command(args)


_PERIOD = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_period(text: str) -> timedelta:
    """`30s`, `15m`, `6h` or `1d` as a timedelta.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    match = _PERIOD.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a period: a positive whole number and s, m, h or d (e.g. 1d, 1h)"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _add_analyze(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "analyze",
        help="write the report of one experiment: Markdown, plots, CSV and JSON",
        description=(
            "Per-variant metrics, effects with confidence intervals, SRM, decision history "
            "and the cumulative lift at the end of every period, written to DIR: "
            "<experiment>.md, plots (<experiment>_lift / _arms / _decisions, PNG and SVG), "
            "<experiment>.json and CSV tables (_lift, _arms, _decisions). Reads Postgres or, "
            "with the embedded feature store of make run, the gateways' SQLite files."
        ),
    )
    _config_argument(parser)
    parser.add_argument("--experiment", required=True, help="experiment name")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--period",
        type=parse_period,
        default=timedelta(days=1),
        metavar="N{s,m,h,d}",
        help="length of the periods the cumulative figures are given for (default: 1d)",
    )
    parser.set_defaults(handler=_analyze)


_COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_stats,
    _add_sidecar,
    _add_experiments,
    _add_analyze,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ab`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="recsys-ab", description="Experiment tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('recsys')}")
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
