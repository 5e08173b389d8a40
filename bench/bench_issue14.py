"""Issue 14, every row of its table side by side, each against its baseline measured in the
same run (not a timed test): one command.

- start-up: ``tgmux --version`` and ``tgmux --help`` against ``python -c pass``;
- S1 fan-in (``bench_http``): N chats x 1 message to a provider answering in 300 ms, tgmux's
  engine against bare aiohttp doing the same N POSTs; CPU per message above bare; failed
  requests (the N=10 000 row);
- the Telegram path (``bench_telegram``): T1 throughput against a bare Pyrogram handler, T2
  streamed finals in private chats against the group path, T3 a burst under Telegram's flood
  limits (FLOOD_WAITs, budget used, typing actions).

Run: python bench/bench_issue14.py [--quick]   (full: about 15 minutes on 2 cores; quick: 3)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_http
import bench_telegram


def _seconds(command: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def startup_rows(rounds: int) -> list[dict[str, Any]]:
    bare = _seconds([sys.executable, "-c", "pass"], rounds)
    rows = []
    for flag in ("--version", "--help"):
        ours = _seconds([sys.executable, "-m", "tgmux", flag], rounds)
        rows.append({"what": f"tgmux {flag}", "baseline": f"python -c pass {bare:.3f} s",
                     "tgmux": f"{ours:.3f} s", "ratio": f"{ours / bare:.1f}x",
                     "target": "<= 0.25 s", "met": ours <= 0.25})
    return rows


def fan_in_rows(quick: bool) -> list[dict[str, Any]]:
    ns = bench_http.QUICK_NS if quick else bench_http.DEFAULT_NS
    rows = []
    for row in bench_http.run_rows(ns, 3 if quick else 5, ("aiohttp", "engine")):
        ratio, above = row.ratio["engine"], row.cpu_above_bare_ms["engine"]
        failed = row.failed["engine"]
        rows.append({"what": f"S1 fan-in, N={row.n}, provider answers in 300 ms",
                     "baseline": f"bare aiohttp {row.wall['aiohttp']:.3f} s",
                     "tgmux": f"{row.wall['engine']:.3f} s; CPU {above:+.3f} ms/msg above "
                              f"bare; {failed} failed",
                     "ratio": f"{ratio:.2f}x",
                     "target": "<= 1.25x, <= 0.1 ms/msg, 0 failed",
                     "met": ratio <= 1.25 and above <= 0.1 and failed == 0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer rounds")
    args = parser.parse_args()
    print(f"machine: {bench_http.machine()}")
    rows = startup_rows(5 if args.quick else 10)
    rows += fan_in_rows(args.quick)
    rows += bench_telegram.run_rows(quick=args.quick)
    bench_telegram.print_rows(rows)
    missed = [row["what"] for row in rows if not row["met"]]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} targets met"
          + (f"; not met: {'; '.join(missed)}" if missed else ""))


if __name__ == "__main__":
    main()
