"""``python -m bench``: run the benchmark, print the table, write JSON.

.venv/bin/python -m bench            # the full run (about 4 minutes)
.venv/bin/python -m bench --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from bench.report import table
from bench.runner import SCENARIOS, SERVERS, Options, run

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"
QUICK_OUTPUT = DEFAULT_OUTPUT.with_name("quick.json")


def _counts(parser: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        parser.error(f"--processes {text!r}: give process counts of 1 or more, comma-separated, e.g. 1,2")
    return counts


def parse_args(argv: list[str]) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few messages and connections, short windows")
    parser.add_argument(
        "--servers",
        default="baseline,project",
        help=f"comma-separated, from: {', '.join(SERVERS)} (the last three: the project with another layer)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: mass, idle, relay, resume")
    parser.add_argument(
        "--processes",
        default="1",
        help="daphne processes of the project, comma-separated: one run per count, e.g. 1,2 (default 1)",
    )
    parser.add_argument("--seconds", type=float, help="length of each relay run (default 10)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="relay rounds, the servers taking turns phase by phase; figures are the rounds' median (default 3)",
    )
    parser.add_argument("--connections", help="idle connection counts, comma-separated (default 2000,10000)")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the servers (default WARNING)")
    parser.add_argument("--output", type=Path, help="JSON file (default results/latest.json; quick.json with --quick)")
    args = parser.parse_args(argv)
    options = Options(
        servers=[s.strip() for s in args.servers.split(",") if s.strip()],
        processes=_counts(parser, args.processes),
        log_level=args.log_level,
        redis_url=os.environ.get("REDIS_URL", "").strip(),
        database_url=os.environ.get("DATABASE_URL", "").strip(),
        scenarios=[s.strip() for s in args.scenarios.split(",") if s.strip()],
    )
    if args.quick:
        options.seconds, options.drain, options.saturation_limit = 1.0, 5.0, 500
        options.rates, options.connections, options.mass, options.idle_workers = [200], [100], 100, 1
        options.settle, options.rounds = 0.2, 1
    if args.seconds:
        options.seconds = args.seconds
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error(f"--rounds must be 1 or more, not {args.rounds}")
        options.rounds = args.rounds
    if args.connections:
        options.connections = [int(n) for n in args.connections.split(",")]
    if set(options.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario(s) in {args.scenarios!r}; use {', '.join(SCENARIOS)}")
    unknown = set(options.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}; use {', '.join(SERVERS)}")
    output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    return options, output


def main(argv: list[str] | None = None) -> int:
    options, output = parse_args(sys.argv[1:] if argv is None else argv)
    report = asyncio.run(run(options, progress=lambda text: print(f"... {text}", file=sys.stderr, flush=True)))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
