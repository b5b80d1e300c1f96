"""PatchCore coreset under CPU contention: greedy_coreset idle vs beside one busy process.

    python benchmarks/coreset_contention.py                                  # this tree only
    python benchmarks/coreset_contention.py --variant before=/path/to/old/src --variant after=src

Each variant is a source tree holding ``defectbench``; every timing runs in a fresh worker process
(``PYTHONPATH=<tree>``) that builds the same seeded features (N x D float32, Gaussian), sets the torch
thread count and times ``greedy_coreset(features, ratio)`` alone (the worker's imports and feature
generation are not timed). "busy" = one competing process (``python -c 'while True: pass'``) runs on
the machine during the timing, as another job would on a shared node. Variants and load states are
interleaved (idle A, busy A, idle B, busy B, ...) for ``--repeats`` rounds, so machine drift hits
every side alike; the table shows medians. The workers also report a hash of the picks: the variants
must pick the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import machine_line, write_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKER = """
import hashlib, json, sys, time
import torch
try:
    from defectbench.anomaly.coreset import greedy_coreset
except ImportError:  # a tree from before PatchCore was split into parts
    from defectbench.anomaly.patchcore import greedy_coreset
n, dim, ratio, threads = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
features = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
t0 = time.perf_counter()
picks = greedy_coreset(features, ratio, seed=0)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "picks": hashlib.sha256(picks.numpy().tobytes()).hexdigest()[:16]}))
"""


def run_worker(src: Path, args: argparse.Namespace, busy: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run([sys.executable, "-c", WORKER, str(args.n), str(args.dim), str(args.ratio), str(args.threads)],
                             env=env, capture_output=True, text=True, check=True, timeout=args.timeout)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=SRC",
                    help="a source tree to time (repeatable); default: this tree's src/")
    ap.add_argument("--n", type=int, default=78_400, help="patches (100 images of 28x28 patches)")
    ap.add_argument("--dim", type=int, default=152)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per timing")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "coreset_contention.md")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"current": str(ROOT / "src")}
    variants = {name: Path(src).resolve() for name, src in variants.items()}

    load_start = os.getloadavg()[0]
    times: dict[tuple[str, str], list[float]] = {}
    picks: dict[str, set[str]] = {}
    for r in range(args.repeats):
        for name, src in variants.items():
            for state in ("idle", "busy"):
                res = run_worker(src, args, busy=state == "busy")
                times.setdefault((name, state), []).append(res["seconds"])
                picks.setdefault(name, set()).add(res["picks"])
                print(f"round {r + 1} {name} {state}: {res['seconds']:.2f} s (picks {res['picks']})", flush=True)
    load_end = os.getloadavg()[0]

    same = len({h for hs in picks.values() for h in hs}) == 1
    rows = []
    for name in variants:
        idle = statistics.median(times[(name, "idle")])
        busy = statistics.median(times[(name, "busy")])
        rows.append(f"| {name} | {idle:.2f} | {busy:.2f} | **{busy / idle:.2f}x** | "
                    f"{', '.join(f'{t:.1f}' for t in times[(name, 'idle')])} | {', '.join(f'{t:.1f}' for t in times[(name, 'busy')])} |")
    lines = [
        "# PatchCore coreset: idle vs one busy competing process",
        "",
        f"Command: `python benchmarks/coreset_contention.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}).",
        machine_line(load_start, load_end),
        f"Work: `greedy_coreset` of {args.n:,} x {args.dim} Gaussian float32 features, ratio {args.ratio} "
        f"({int(args.n * args.ratio):,} picks, 128-d projection, 10 starts), {args.threads} torch threads. "
        f"{args.repeats} rounds, variants and idle/busy interleaved; medians.",
        "",
        "| variant | idle s | busy s | busy / idle | idle runs | busy runs |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Picks identical across variants and runs: **{'yes' if same else 'NO'}** "
        f"({', '.join(f'{n}: {sorted(h)}' for n, h in picks.items())}).",
        "",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
