"""CPU-time estimate of a whole run (issue 16 item 7): measured CPU seconds of one job of each kind,
scaled to each job of the target config, times the jobs `snakemake -n` plans.

    python benchmarks/reference_estimate.py --timing-dir DIR --timing-config DIR/timing.yaml \\
        --config config/reference.yaml      # writes benchmarks/results/reference_estimate.md

Inputs: the Snakemake benchmark files (``logs/benchmarks/<rule>/...tsv``, column ``cpu_time``:
user + system seconds of the job's processes) of a timing run in ``--timing-dir``, made with
``--timing-config`` (the target config with fewer epochs: the epoch-driven jobs are timed short
and scaled). Per job of the target's dry run:

* epoch-driven jobs (pretrain_contrastive, budget_pretrain, pretrain_diffusion, train_supervised):
  overhead + (measured - overhead) x epochs ratio x train-image ratio x pixel ratio, with the
  train images counted from the timing run's split files and ``OVERHEAD_CPU_S`` the per-job
  start-up; budget points as pretrain_contrastive jobs x their epochs and (size / image_size)^2;
* every other job: the measured job of the same rule on the same dataset (and backbone, for
  the probes and features), else the rule's mean, marked as a proxy.

The estimate of wall time is CPU / cores: an ideal packing of 1-thread jobs on idle cores; the
critical path (data -> diffusion -> views -> DiffCL -> probe) is listed so it can be checked to fit.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Per-job CPU seconds not scaled with epochs (interpreter, imports, data, model build): assumed; a
# few seconds either way moves the total by well under 1%.
OVERHEAD_CPU_S = 5.0
EPOCH_RULES = {"pretrain_contrastive": "contrastive", "budget_pretrain": "contrastive",
               "pretrain_diffusion": "diffusion", "train_supervised": "supervised"}
# CPU seconds per job of the kinds the timing run could not time on the loaded machine, each
# derived from a recorded number (stated); replaced by a measurement whenever one exists.
ASSUMED = {
    # the previous reference run (results/reference/tables, 1-thread jobs): 40 s at 32 px / 384
    # images / fp32 -> x4 pixels x1.25 images, / 1.5 for bf16
    "train_supervised": (133.0, "old run 40 s x4 px x1.25 images / 1.5 bf16"),
    # DDAD on magnetic tile: old run 290 s for ~420 test images at 64 px -> 592 test images
    "ddad": (410.0, "old run 290 s x592/420 test images"),
    # PatchCore at 224 px: the timing run's job had used 99 CPU-s when it was stopped while scoring
    "patchcore": (150.0, "99 CPU-s measured before scoring ended, rounded up"),
    # 36 images + 160 references embedded at 224 px (~0.25 s each) + the weightings at the
    # measured 38 GMAC/s: (36 x 784)^2 x 4096 and 36 x 784 x 16 x 784 x 4096 multiply-adds
    "cluster": (170.0, "embedding + weightings at the measured cdist rate"),
    # 20 DDIM steps from strength 0.2-0.5 (~7 steps) x k = 2 forward passes per image ~ 5 training epochs
    "diffusion_views": (None, "5 epochs of the same dataset's diffusion training"),
    "anomaly_features": (20.0, "~800 images through a ResNet-18 / EfficientNet-Lite0 at 64 px"),
    "score_anomaly": (10.0, "4 scorers on ~800 feature vectors"),
    "fetch_dataset": (10.0, "the data run: 31.5 CPU-s for all data jobs of 4 datasets"),
    "build_manifest": (5.0, "same"), "build_cache": (5.0, "same"), "make_split": (2.0, "same"),
    "aggregate": (30.0, "guess"), "figures": (60.0, "guess"), "track": (20.0, "guess"), "all": (0.0, ""),
}
ORACLE_CLUSTER_CPU_S = 8.0  # the oracle control embeds no image: start-up, split, Ward


def dry_run_jobs(config: Path, workdir: Path) -> list[tuple[str, dict[str, str], str]]:
    """(rule, wildcards, benchmark file or "") of every job ``snakemake -n`` plans for ``config`` from scratch."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "--directory",
                          str(workdir), "--cores", "2", "--forceall", "--configfile", str(config)],
                         capture_output=True, text=True, check=True).stdout
    jobs: list[tuple[str, dict[str, str], str]] = []
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        field, _, value = line.strip().partition(": ")
        if m:
            jobs.append((m[1], {}, ""))
        elif jobs and field == "wildcards":
            jobs[-1][1].update(dict(kv.split("=", 1) for kv in value.split(", ")))
        elif jobs and field == "benchmark":
            jobs[-1] = (jobs[-1][0], jobs[-1][1], value)
    return jobs


def measured_costs(timing_dir: Path) -> dict[str, float]:
    """benchmark file (relative to the working directory) -> CPU seconds, of the timing run."""
    costs = {}
    for tsv in sorted((timing_dir / "logs" / "benchmarks").rglob("*.tsv")):
        with tsv.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows and rows[-1]["cpu_time"] not in ("", "NA"):
            costs[str(tsv.relative_to(timing_dir))] = float(rows[-1]["cpu_time"])
    return costs


def closest(benchmark: str, measured: list[str]) -> str:
    """The measured benchmark file of the same rule sharing the most path components with ``benchmark``
    (position by position: dataset, method, backbone, ... as the rule's pattern orders them)."""
    parts = benchmark.split("/")
    return max(measured, key=lambda m: sum(a == b for a, b in zip(parts, m.split("/"))))


def train_images(timing_dir: Path, dataset: str, task: str) -> int:
    import pandas as pd

    split = pd.read_parquet(timing_dir / "results" / "data" / dataset / "splits" / f"{task}-seed0.parquet")
    return int((split["subset"] == "train").sum())


def job_cost(rule: str, wc: dict[str, str], benchmark: str, costs: dict[str, float], timing: dict, target: dict,
             timing_dir: Path) -> tuple[float, str]:
    """(CPU seconds, how it was obtained: measured | proxy | assumed, scaled) of one job."""
    timed_as = {"budget_pretrain": "pretrain_contrastive", "budget_probe": "linear_probe",
                "diffusion_views": "pretrain_diffusion"}.get(rule, rule)
    if rule == "budget_pretrain":  # a budget point is a pretrain_contrastive job at other epochs / size
        benchmark = (f"logs/benchmarks/pretrain_contrastive/{wc['method']}/{wc['dataset']}/classification/"
                     f"{wc['backbone']}/seed{wc['seed']}.tsv")
    if rule == "budget_probe":  # the converged probe of one encoder (one label fraction: an upper bound)
        benchmark = f"logs/benchmarks/linear_probe/{wc['method']}/{wc['dataset']}/{wc['backbone']}/seed{wc['seed']}.tsv"
    if rule == "diffusion_views":
        benchmark = f"logs/benchmarks/pretrain_diffusion/{wc['dataset']}/{wc['task']}/seed{wc['seed']}.tsv"
    if rule == "cluster" and wc.get("features") == "oracle":
        return ORACLE_CLUSTER_CPU_S, "assumed"
    same_rule = [b for b in costs if b.split("/")[2] == timed_as]
    if not benchmark or not same_rule or (rule in ASSUMED and ASSUMED[rule][0] is not None and benchmark not in costs):
        return ASSUMED[rule][0], "assumed"
    source = benchmark if benchmark in costs else closest(benchmark, same_rule)
    how = "measured" if source == benchmark and rule == timed_as else "proxy"
    cost = costs[source]
    if timed_as in EPOCH_RULES:
        section = EPOCH_RULES[timed_as]
        epochs = int(wc["epochs"]) if rule == "budget_pretrain" else target[section]["epochs"]
        scale = (5 if rule == "diffusion_views" else epochs) / timing[section]["epochs"]
        if timed_as in ("pretrain_contrastive", "pretrain_diffusion"):  # by train images (anomaly: nominal only)
            ds, task = source.split("/")[3:5] if timed_as == "pretrain_diffusion" else source.split("/")[4:6]
            scale *= train_images(timing_dir, wc["dataset"], wc.get("task", "classification")) / train_images(timing_dir, ds, task)
        if rule == "budget_pretrain":  # by pixels: timed at the dataset's image size
            scale *= (int(wc["size"]) / target["datasets"][wc["dataset"]]["image_size"]) ** 2
        cost = OVERHEAD_CPU_S + (cost - OVERHEAD_CPU_S) * scale
        how += " (scaled)"
    return cost, how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timing-dir", type=Path, action="append", required=True,
                    help="working directory of a timing run (repeatable: a later one's files win)")
    ap.add_argument("--timing-config", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "reference.yaml")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--note", default="", help="a sentence on how the timing runs were made (machine, load, switches)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reference_estimate.md")
    args = ap.parse_args()
    from defectbench.config import load_config

    timing, target = load_config(args.timing_config), load_config(args.config)
    differ = [d for d in target["datasets"] if timing["datasets"].get(d) != target["datasets"][d]]
    if differ:
        sys.exit(f"{args.config}: dataset entries {', '.join(differ)} differ from {args.timing_config}; re-time them")
    costs = {k: v for d in args.timing_dir for k, v in measured_costs(d).items()}
    timing_dir = args.timing_dir[0]
    per_rule: dict[str, list[float]] = defaultdict(list)
    how_by_rule: dict[str, set[str]] = defaultdict(set)
    for rule, wc, benchmark in dry_run_jobs(args.config, timing_dir):
        cost, how = job_cost(rule, wc, benchmark, costs, timing, target, timing_dir)
        per_rule[rule].append(cost)
        how_by_rule[rule].add(how.split(" ")[0])
    total = sum(sum(v) for v in per_rule.values())
    lines = [f"# Run estimate: `{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}`", "",
             f"Command: `python benchmarks/reference_estimate.py --config {args.config.name} ...` (per-job CPU seconds "
             f"from a timing run of `{args.timing_config.name}`, scaled as the script's docstring says).", "",
             *([args.note, ""] if args.note else []),
             "| rule | jobs | CPU s per job (mean) | CPU s total | source |", "|---|---|---|---|---|"]
    for rule, values in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {rule} | {len(values)} | {sum(values) / len(values):.1f} | {sum(values):.0f} | "
                     f"{', '.join(sorted(how_by_rule[rule]))} |")
    used = sorted(rule for rule, hows in how_by_rule.items() if "assumed" in hows and ASSUMED.get(rule, (0, ""))[1])
    lines += ["", "Assumed per-job costs (not timed here; basis): " + "; ".join(
        f"{rule} {ASSUMED[rule][0]:.0f} s ({ASSUMED[rule][1]})" for rule in used if ASSUMED[rule][0] is not None) + "."]
    lines += ["", "Measured jobs (CPU s, Snakemake benchmark files; the timing config's epochs, 1 thread): " + "; ".join(
        f"`{path.removeprefix('logs/benchmarks/').removesuffix('.tsv')}` {cpu:.1f}" for path, cpu in sorted(costs.items())) + "."]
    lines += ["", f"Total: {sum(len(v) for v in per_rule.values())} jobs, {total:.0f} CPU s = {total / 3600:.2f} CPU h; "
              f"on {args.cores} idle cores (1-thread jobs, ideal packing): **{total / args.cores / 60:.0f} min** wall."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
