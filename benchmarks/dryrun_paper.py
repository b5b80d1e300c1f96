"""DAG-building time of the full grid: `snakemake -n` on config/paper.yaml (target: under 15 s).

    .venv/bin/python benchmarks/dryrun_paper.py [--baseline main] [--repeats 3]
        # writes benchmarks/results/dryrun_paper.md

Measures this working tree and, with identical switches in the same run, a baseline git ref
(default: main; exported with `git archive` into benchmarks/.work/), so the cost of per-job params
and code fingerprints (every job's params are computed, and every stage's imports parsed, at DAG
time) is seen beside the code without them. Each side runs in a fresh directory (no .snakemake
metadata), its own library on PYTHONPATH. Wall and CPU (user+sys of the snakemake process) per
repeat; the median is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("Snakefile", "rules", "workflow_scripts", "config", "profiles", "report", "envs", "src")
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def export_tree(dest: Path, ref: str | None) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if ref is None:
        for part in PARTS:
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / part)
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, *PARTS], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def dry_run(tree: Path) -> tuple[float, float, int]:
    """(wall s, cpu s, jobs) of one `snakemake -n` of config/paper.yaml in a fresh run directory."""
    shutil.rmtree(tree / ".snakemake", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([str(SNAKEMAKE), "-n", "--configfile", "config/paper.yaml"], cwd=tree, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed in {tree}:\n{proc.stderr[-3000:]}")
    jobs = int(re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M).group(1))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git ref to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = HERE / ".work" / "dryrun"
    sides = {"this tree": export_tree(work / "tree", None), f"baseline ({args.baseline})": export_tree(work / "base", args.baseline)}
    rows = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
        for name, tree in sides.items():
            rows[name].append(dry_run(tree))
    load = os.getloadavg()
    lines = [
        "# `snakemake -n --configfile config/paper.yaml`", "",
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
        f"{load[0]:.1f} at the end; {args.repeats} interleaved repeats, fresh .snakemake each; median.", "",
        "| tree | jobs | wall s (median) | CPU s (median) | wall s (all) |", "|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        lines.append(f"| {name} | {runs[0][2]} | {statistics.median(walls):.1f} | {statistics.median(cpus):.1f} | "
                     f"{', '.join(f'{w:.1f}' for w in walls)} |")
    out = HERE / "results" / "dryrun_paper.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
