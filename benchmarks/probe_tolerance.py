"""The converged probe's stopping rule: how strict must ``probe.tolerance`` be? On real encoders
of a finished reference run, the L2 path (validation candidates + refit) at several tolerances
against the refit run far past them (the optimum).

For each job (method, seed) of a finished run of ``--config`` under ``--root``: the probe features
are extracted once (``defectbench.probe.probe_features``, the job's own params), then at every
label fraction ``fit_logistic_probe`` runs once per tolerance (same features, grid, max_steps, one
BLAS thread), and the optimum is ``fit_logistic`` at the strictest run's chosen L2 with
``--optimum-steps`` iterations and tolerance 1e-9. Reported per fit: L-BFGS iterations over the
path, seconds, whether the refit met the tolerance, test accuracy, and the share of test images
whose prediction equals the optimum's.

    python benchmarks/probe_tolerance.py --root /path/to/reference-run --jobs simclr:1 gca:2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import _report
from defectbench import params, paths
from defectbench import probe as probe_mod
from defectbench.config import load_config
from defectbench.data.cache import SplitCache
from defectbench.data.splits import labelled_subset


def run_job(root: Path, config: dict, method: str, seed: int, tolerances: list[float], optimum_steps: int) -> list[dict]:
    import torch

    dataset = next(name for name, entry in config["datasets"].items() if "classification" in entry["tasks"])
    backbone = config["backbones"][0]
    wc = {"method": method, "dataset": dataset, "backbone": backbone, "seed": str(seed)}
    pcfg = params.job_params("linear_probe", config, wc)["probe"]
    size = config["datasets"][dataset]["image_size"]
    data = SplitCache(root / paths.split(dataset, "classification", seed), root / paths.cache(dataset, size))
    encoder = None
    if method not in ("random", "pretrained"):
        encoder = str(root / paths.job("pretrain", "encoder.pt", method=method, dataset=dataset, task="classification",
                                       backbone=backbone, seed=seed))
    torch.manual_seed(seed)  # the random-init control's weights, as the job draws them
    feats = probe_mod.probe_features(data, config["label_fractions"], method=method, encoder_path=encoder,
                                     backbone=backbone, pcfg=pcfg, seed=seed, device=torch.device("cpu"),
                                     amp=pcfg["amp"])
    y_test = feats.test["label"].to_numpy()
    n_classes = int(data.split["label"].max()) + 1
    out = []
    for fraction in config["label_fractions"]:
        labelled = labelled_subset(data.split, fraction).sort_values("row")
        views = feats.pool_views[:, np.searchsorted(feats.pool["row"].to_numpy(), labelled["row"].to_numpy())]
        y = labelled["label"].to_numpy()
        fits = []
        for tol in sorted(tolerances, reverse=True):
            t0 = time.perf_counter()
            fit, history = probe_mod.fit_logistic_probe(
                views, y, n_classes, l2_grid=pcfg["l2_grid"], val_fraction=float(pcfg["val_fraction"]), seed=seed,
                max_steps=int(pcfg["max_steps"]), tolerance=tol, class_weight=pcfg["class_weight"])
            fits.append((f"tolerance {tol:g}", fit, int(history["steps"].sum()), time.perf_counter() - t0))
        t0 = time.perf_counter()
        best = probe_mod.fit_logistic(views.reshape(-1, views.shape[-1]), np.tile(y, views.shape[0]), n_classes,
                                      l2=fits[-1][1].l2, max_steps=optimum_steps, tolerance=1e-9,
                                      class_weight=pcfg["class_weight"])
        fits.append((f"optimum ({optimum_steps} steps max)", best, best.steps, time.perf_counter() - t0))
        best_pred = best.predict_proba(feats.test_feats).argmax(1)
        for side, fit, steps, seconds in fits:
            pred = fit.predict_proba(feats.test_feats).argmax(1)
            out.append({"job": f"{method} seed {seed}", "labels": f"{fraction:.0%}", "side": side, "steps": steps,
                        "refit steps": fit.steps, "seconds": seconds, "converged": fit.converged,
                        "grad_max": fit.grad_max, "l2": fit.l2, "accuracy": float(np.mean(pred == y_test)),
                        "agree": float(np.mean(pred == best_pred))})
            print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="a finished run's project directory (results/ under it)")
    ap.add_argument("--config", default="config/reference.yaml", help="its config, relative to --root")
    ap.add_argument("--jobs", nargs="+", default=["simclr:1", "gca:2", "diffcl:2", "random:0"],
                    help="method:seed of the run's linear_probe jobs")
    ap.add_argument("--tolerances", nargs="+", type=float, default=[1e-4, 1e-5, 1e-6])
    ap.add_argument("--optimum-steps", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "probe_tolerance.md")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    os.chdir(args.root)
    config = load_config(args.config)
    load0 = os.getloadavg()[0]
    rows = [r for job in args.jobs
            for r in run_job(args.root, config, job.split(":")[0], int(job.split(":")[1]), args.tolerances, args.optimum_steps)]
    load1 = os.getloadavg()[0]
    lines = ["# Converged probe: which tolerance? Paths at several tolerances vs the optimum", "",
             "Command: `python benchmarks/probe_tolerance.py --root <run> --jobs " + " ".join(args.jobs) + "`", "",
             _report.machine_line(load0, load1) + " One torch thread, one BLAS thread (as the probe); max_steps "
             "from the run's config.", "",
             "| job | labels | fit | L-BFGS steps | refit steps | seconds | refit met tolerance | grad max | l2 | "
             "test accuracy | predictions = optimum's |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['job']} | {r['labels']} | {r['side']} | {r['steps']} | {r['refit steps']} | {r['seconds']:.1f} | "
                     f"{r['converged']} | {r['grad_max']:.1e} | {r['l2']:g} | {r['accuracy']:.4f} | {r['agree']:.4f} |")
    lines += ["", "Per fit (sums over jobs and fractions):", "",
              "| fit | L-BFGS steps | seconds | refits meeting it | largest accuracy gap to the optimum | lowest agreement |",
              "|---|---|---|---|---|---|"]
    optimum = {(r["job"], r["labels"]): r for r in rows if r["side"].startswith("optimum")}
    for side in dict.fromkeys(r["side"] for r in rows):
        sub = [r for r in rows if r["side"] == side]
        gap = max(abs(r["accuracy"] - optimum[(r["job"], r["labels"])]["accuracy"]) for r in sub)
        lines.append(f"| {side} | {sum(r['steps'] for r in sub)} | {sum(r['seconds'] for r in sub):.1f} | "
                     f"{sum(r['converged'] for r in sub)}/{len(sub)} | {gap:.4f} | {min(r['agree'] for r in sub):.4f} |")
    _report.write_report(args.out, lines)


if __name__ == "__main__":
    main()
