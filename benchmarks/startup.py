"""Start-up cost per job: `import <stage module>` per pipeline stage, and the overhead of a no-op job.

    python benchmarks/startup.py                                         # this tree only
    python benchmarks/startup.py --variant before=/path/to/old/src --variant after=src

* Import: wall seconds of ``python -c 'import <module>'`` for the module each rule's script imports
  (a fresh process each time, so nothing is cached in memory except by the OS).
* Torch job set-up: the import plus what every torch job does before its first batch: enter
  ``stage_job`` (threads, device, seed, deterministic flag) and build its ResNet-18; and the same
  with one training step (forward, backward, the pipeline's Adam step), as a training job's first.
  Library calls made here can import far more than the module did (torchvision and torch.optim
  import torch._dynamo).
* Diffusion job set-up: the same for a DDPM job (import, ``stage_job``, build the UNet and the
  noise schedule, optionally one AdamW training step); before 2026-12-02 this imported diffusers.
* No-op job: a one-rule Snakefile whose script imports the score_anomaly stage module and returns.
  ``snakemake --cores 1`` is timed with --jobs no-op jobs and with none (every output present);
  the difference divided by the number of jobs is what each job adds: Snakemake's job set-up, the
  script's Python start-up and the stage import.

Variants (source trees holding ``defectbench``) and measurements are interleaved over --repeats
rounds; the tables show medians. Run it with the Python of the environment to measure: the
Snakemake executor plugins installed there are imported by every Snakemake call.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine_line, write_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The module each rule's workflow script imports (workflow_scripts/*.py).
STAGES = {
    "fetch_dataset": "defectbench.data.sources",
    "build_manifest": "defectbench.data.manifest",
    "make_split": "defectbench.data.splits",
    "build_cache": "defectbench.data.cache",
    "pretrain_contrastive": "defectbench.ssl.pretrain",
    "train_supervised": "defectbench.supervised",
    "linear_probe": "defectbench.probe",
    "anomaly_features / score_anomaly": "defectbench.anomaly.image_level",
    "patchcore": "defectbench.anomaly.patchcore",
    "cluster": "defectbench.clustering",
    "pretrain_diffusion": "defectbench.diffusion.ddpm",
    "ddad": "defectbench.diffusion.ddad",
    "aggregate": "defectbench.tables",
    "figures": "defectbench.figures",
    "track": "defectbench.tracking",
}
TORCH_SETUP = """
import torch
from defectbench.ssl.pretrain import pretrain_contrastive
from defectbench.models.backbones import build_backbone
from defectbench.runtime import stage_job
try:
    from defectbench.optim import Adam  # the pipeline's optimizer since 2026-12-02
except ImportError:  # before: torch.optim's fused Adam, as pretraining built it
    def Adam(params, lr):
        return torch.optim.Adam(params, lr=lr, fused=True)

with stage_job(stage="pretraining", cfg={"device": "cpu"}, keys={}, seed=0):
    net, _ = build_backbone("resnet18")
    if {step}:
        optimizer = Adam(net.parameters(), lr=1e-3)
        net(torch.zeros(2, 3, 32, 32)).sum().backward()
        optimizer.step()
"""
DIFFUSION_SETUP = """
import torch
from defectbench.diffusion.ddpm import build_unet, make_scheduler
from defectbench.optim import Adam
from defectbench.runtime import stage_job

with stage_job(stage="pretraining", cfg={"device": "cpu"}, keys={}, seed=0):
    unet = build_unet(64, [32, 64, 128], 1, 1, False)
    schedule = make_scheduler({"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    if {step}:
        optimizer = Adam(unet.parameters(), lr=1e-3, decoupled_weight_decay=True)
        out = unet(torch.zeros(2, 3, 64, 64), torch.tensor([1, 500]))
        getattr(out, "sample", out).square().mean().backward()  # before 2026-12-02: diffusers' output
        optimizer.step()
"""
SETUPS = {"torch": TORCH_SETUP, "diffusion": DIFFUSION_SETUP}
NOOP_SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.done", i=range({jobs}))

rule noop:
    output: "out/{{i}}.done"
    script: "noop.py"
"""
NOOP_SCRIPT = """
from defectbench.anomaly.image_level import score_anomaly  # the stage module of a light job
from pathlib import Path

Path(snakemake.output[0]).touch()  # noqa: F821
"""


def cost(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a command and every process it waited for.

    CPU seconds (user + system) hardly depend on how busy the shared machine is; wall seconds do.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _shown(src: str) -> str:
    """A source tree as the record names it: relative to the project when inside it (no machine paths)."""
    path = Path(src)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=SRC")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=4, help="no-op jobs per timed Snakemake call")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "startup.md")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"current": str(ROOT / "src")}
    variants = {name: str(Path(src).resolve()) for name, src in variants.items()}
    envs = {name: dict(os.environ, PYTHONPATH=src) for name, src in variants.items()}

    load_start = os.getloadavg()[0]
    imports: dict[tuple[str, str], list[tuple[float, float]]] = {}
    noop: dict[str, list[tuple[float, float]]] = {}
    setup: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "Snakefile").write_text(NOOP_SNAKEFILE.format(jobs=args.jobs))
        (work / "noop.py").write_text(NOOP_SCRIPT)
        snakemake = [sys.executable, "-m", "snakemake", "--cores", "1", "--quiet", "all"]
        for r in range(args.repeats):
            for name, env in envs.items():
                for stage, module in STAGES.items():
                    imports.setdefault((name, stage), []).append(cost([sys.executable, "-c", f"import {module}"], env))
                for kind, script in SETUPS.items():
                    for step in (False, True):
                        setup.setdefault((name, kind, step), []).append(
                            cost([sys.executable, "-c", script.replace("{step}", str(step))], env))
                shutil.rmtree(work / "out", ignore_errors=True)
                with_jobs = cost(snakemake, env, work)
                without = cost(snakemake, env, work)  # every output present: nothing to run
                noop.setdefault(name, []).append(tuple((a - b) / args.jobs for a, b in zip(with_jobs, without)))
            print(f"round {r + 1}/{args.repeats} done", flush=True)
    load_end = os.getloadavg()[0]

    names = list(variants)

    def median(values: list[tuple[float, float]], which: int) -> float:
        return statistics.median(v[which] for v in values)

    def table(which: int) -> list[str]:
        head = "| stage (module) | " + " | ".join(names) + (" | before / after |" if len(names) == 2 else " |")
        rows = [head, "|---|" + "---|" * len(names) + ("---|" if len(names) == 2 else "")]
        for stage, module in STAGES.items():
            vals = [median(imports[(n, stage)], which) for n in names]
            ratio = f" {vals[0] / vals[1]:.1f}x |" if len(names) == 2 else ""
            rows.append(f"| {stage} (`{module}`) | " + " | ".join(f"{v:.2f}" for v in vals) + " |" + ratio)
        return rows

    def setup_table(kind: str) -> list[str]:
        rows = [f"| {what} {unit} | " + " | ".join(f"{median(setup[(n, kind, step)], which):.2f}" for n in names) + " |"
                for step, what in ((False, "set-up"), (True, "set-up + one training step"))
                for which, unit in ((1, "CPU s"), (0, "wall s"))]
        return ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names), *rows]

    lines = [
        "# Start-up cost per job: stage imports and a no-op job",
        "",
        f"Command: `python benchmarks/startup.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}).",
        machine_line(load_start, load_end) + " "
        f"Variants: {', '.join(f'{n} = `{_shown(s)}`' for n, s in variants.items())}. {args.repeats} interleaved rounds, medians.",
        "",
        "## `python -c 'import <module>'`: CPU seconds (user + system; the load-independent figure)",
        "",
        *table(1),
        "",
        "## The same, wall seconds (inflated by the machine's load)",
        "",
        *table(0),
        "",
        "## Torch job set-up: import `defectbench.ssl.pretrain`, enter `stage_job` (CPU, seed 0), build ResNet-18",
        "",
        "A training job's set-up adds its first step: forward, backward and the pipeline's Adam step at 32 px.",
        "",
        *setup_table("torch"),
        "",
        "## Diffusion job set-up: import `defectbench.diffusion.ddpm`, enter `stage_job`, build a 3-level UNet "
        "(32/64/128, attention at the coarsest level) and the noise schedule",
        "",
        "A pretrain_diffusion job's set-up adds its first step: forward, backward and AdamW at 64 px, batch 2.",
        "",
        *setup_table("diffusion"),
        "",
        f"## One no-op job (score_anomaly's module): `snakemake --cores 1` with {args.jobs} no-op jobs minus the "
        "same call with nothing to do, per job",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| CPU s | " + " | ".join(f"{median(noop[n], 1):.2f}" for n in names) + " |",
        "| wall s | " + " | ".join(f"{median(noop[n], 0):.2f}" for n in names) + " |",
        "",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
