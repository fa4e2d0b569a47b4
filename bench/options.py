"""The command line of ``python -m bench.run``: its options, and the smaller defaults of ``--smoke``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from bench.timescale import ACETRACK_TIME_SETTINGS
from bench.workload import SHAPES

RESULTS = Path(__file__).resolve().parent / "results"
#: what ``--smoke`` changes, unless the option was given
SMOKE_DEFAULTS = (
    ("tasks", 200),
    ("scale", 0.1),
    ("sdk_sample", 50),
    ("tail_s", 150.0),
    ("arrival_s", 100.0),
    ("hotpath_s", 3.0),
    ("idle_s", 2.0),
)


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = build_parser(description)
    args = parser.parse_args(argv)
    args.acetrack_set = dict(args.acetrack_set)
    if args.smoke:
        defaults = parser.parse_args([])
        for key, value in SMOKE_DEFAULTS:
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    args.stem = args.stem or ("smoke" if args.smoke else f"bench-{args.tasks}")
    return args


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no less than ``minimum`` (else a usage error naming it)."""

    def parse(text: str) -> int:
        value = int(text)  # argparse reports a ValueError as "invalid ... value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its message
    return parse


def build_parser(description: str) -> argparse.ArgumentParser:
    """Every option, in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=description)
    _workload_options(parser)
    _contender_options(parser)
    _output_options(parser)
    return parser


def _workload_options(parser: argparse.ArgumentParser) -> None:
    """The workload, the simulated upstream and the time scale."""
    parser.add_argument("--tasks", type=at_least(1), default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="lognormal", help="lifetime shape (bench.workload)")
    parser.add_argument(
        "--latency-s", type=float, default=0.0, help="unscaled seconds the simulator takes to answer (slow upstream)"
    )
    parser.add_argument(
        "--callback-loss",
        type=float,
        help="the upstream calls back (to each acetrack contender's acetrack serve); this share is lost",
    )
    parser.add_argument(
        "--callback-delay-s",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(0.0, 2.0),
        help="LOW,HIGH: how late callbacks are, unscaled seconds (default 0,2)",
    )
    parser.add_argument("--scale", type=float, default=0.5, help="time scale (1 = real time)")
    parser.add_argument(
        "--arrival-s",
        type=float,
        default=470.0,
        help="arrival window, unscaled seconds (470: about 170 of 1,000 tasks in flight; 30: a burst)",
    )


def _contender_options(parser: argparse.ArgumentParser) -> None:
    """Who runs, in which phase, with which settings, and how long each phase waits."""
    parser.add_argument(
        "--contenders",
        default="acetrack-1w,acetrack-2w,sdk-unlimited|sdk",
        help="comma: run together; '|': then, in a later phase (default: the SDK's 429 storm runs alone)",
    )
    parser.add_argument(
        "--acetrack-set",
        type=_setting,
        action="append",
        default=[],
        help="NAME=SECONDS: an acetrack time setting instead of its default (unscaled), e.g. coalesce_s=3",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a checkout of an earlier acetrack (git worktree): contenders baseline-Nw run its worker in the same "
        "run, for before/after figures that do not depend on how busy the machine is",
    )
    parser.add_argument(
        "--warmup",
        type=at_least(0),
        default=0,
        help="N tasks of the same lifetimes that each acetrack contender tracks to the end before the measured "
        "workload starts (not measured): what a running deployment has learned when a burst comes",
    )
    parser.add_argument("--sdk-sample", type=int, default=200, help="tasks tracked by sdk-unlimited")
    parser.add_argument("--tail-s", type=float, default=240.0, help="unscaled seconds after the last finish to wait")
    parser.add_argument("--idle-s", type=float, default=10.0, help="real seconds of idle-CPU measurement")
    parser.add_argument(
        "--hotpath-s", type=float, default=20.0, help="seconds of each bench.hotpath run after the phases (0: none)"
    )


def _output_options(parser: argparse.ArgumentParser) -> None:
    """Where results go, and the modes: profile, re-render, keep logs, smoke."""
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None, help="output file name stem (default bench-<tasks>, or smoke)")
    parser.add_argument("--profile", action="store_true", help="workers under cProfile (CPU time): hot spots")
    parser.add_argument("--render", type=Path, help="only re-render RESULT.json's targets, markdown and plot")
    parser.add_argument("--keep-tmp", action="store_true", help="keep worker/sim logs and profiles")
    parser.add_argument("--smoke", action="store_true", help="a ~1-minute sanity run; exit 1 only if the bench breaks")


def _setting(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in ACETRACK_TIME_SETTINGS:
        raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(ACETRACK_TIME_SETTINGS)}")
    return name, float(value)
