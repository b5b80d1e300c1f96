"""The ResNet-18 SimCLR training step against the machine's GEMM ceiling: fused Adam and
torch.compile, ours vs lightly with identical switches, in ONE process (CPU).

Each side is the step of benchmarks/simclr_vs_lightly.py on one ready batch of real NEU images
(forward of both views as one batch, loss, backward, Adam): the same network (torchvision
ResNet-18 without fc + projector 512-512-128), batch and resolution on both sides; only the loss
differs (ours: ``defectbench.ssl.losses.nt_xent``, lightly: ``NTXentLoss``). Every switch is
applied to both sides through defectbench's hooks:

* precision and memory format (``--precisions``): fp32, fp32 + channels_last (``fp32cl``), and
  bf16 autocast + channels_last (model and input);
* optimizer: torch's default Adam (for-loop on CPU) or fused Adam (``defectbench.optim.Adam``, torch's fused kernel);
* ``torch.compile`` of the network off / on (``defectbench.train.compiled``, the
  ``contrastive.compile`` switch), compiled once per variant before timing (the compile time is
  reported separately).

Reported: step img/s (1 / median seconds per image over every timed step of every repeat), the
ratios to the eager default-Adam step and ours/lightly, and the share of the GEMM ceiling: step
img/s x FLOPs per image (``torch.utils.flop_counter`` on one step) / the compute ceiling at the
same precision and threads (the faster of a 2048^3 matmul and a 3x3 convolution,
``simclr_vs_lightly.gemm_gflops``), measured next to every round.

Run (needs lightly next to the project, see benchmarks/results/simclr_vs_lightly.md):
    benchmarks/.work/venv-lightly/bin/python benchmarks/step_ceiling.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from _options import add_run_options, add_step_options
from simclr_vs_lightly import (
    LIGHTLY_RECIPE, ROOT, OurBatches, extract_subset, gemm_gflops, make_step, ours_loss, repeat_forever, resized,
    timed_steps,
)
from defectbench.ssl.augment import preset_params

# --precisions name -> (label, bf16 autocast, channels_last, GEMM ceiling dtype)
PRECISIONS = {
    "fp32": ("fp32", False, False, torch.float32),
    "fp32cl": ("fp32 + channels_last", False, True, torch.float32),
    "bf16": ("bf16 + channels_last", True, True, torch.bfloat16),
}
# name -> (fused Adam, torch.compile); eager-adam is the baseline the others are divided by
VARIANTS = {"eager-adam": (False, False), "eager-fused": (True, False), "compiled-fused": (True, True)}



def _relative(value: object) -> str:
    """An argument as recorded: a path inside the checkout relative to it (no machine path)."""
    if isinstance(value, Path) and value.resolve().is_relative_to(ROOT.parent):
        return str(value.resolve().relative_to(ROOT.parent))
    return str(value)

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128, help="NEU images the fixed batch is drawn from")
    add_run_options(ap, size=64, batch=64)
    add_step_options(ap, steps=6, warmup=1, repeats=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "step_ceiling.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import lightly
    from lightly.loss import NTXentLoss

    images = torch.from_numpy(resized(extract_subset(args.images, ROOT / ".work" / "neu-images"), args.size))
    fixed = next(iter(OurBatches(images, args.batch, preset_params("color", LIGHTLY_RECIPE))))
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        make_step(ours_loss, False, False)(fixed)
    gflop_per_image = counter.get_total_flops() / args.batch / 1e9

    sides = {"lightly": NTXentLoss(temperature=0.5), "ours": ours_loss}
    precisions = args.precisions.split(",")
    steps, compile_s = {}, {}
    for prec in precisions:
        _, bf16, channels_last, _ = PRECISIONS[prec]
        for variant in args.variants.split(","):
            fused, compile_model = VARIANTS[variant]
            for side, loss_fn in sides.items():
                name = (prec, variant, side)
                steps[name] = make_step(loss_fn, bf16, channels_last, fused=fused, compile_model=compile_model)
                t0 = time.perf_counter()
                steps[name](fixed)  # compiles here when compile is on
                compile_s[name] = time.perf_counter() - t0
                print(f"built {name}: first step {compile_s[name]:.1f}s", flush=True)

    ceilings: dict[str, list[float]] = {prec: [] for prec in precisions}
    times: dict[tuple, list[float]] = {name: [] for name in steps}
    loads = [os.getloadavg()[0]]
    for r in range(args.repeats):  # interleaved rounds: the machine is shared, take medians
        for prec in precisions:
            ceilings[prec].append(gemm_gflops(PRECISIONS[prec][3]))
        for name, step in steps.items():
            times[name] += timed_steps(step, repeat_forever(fixed), args.warmup, args.steps)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.repeats}: load {loads[-1]:.1f}, img/s",
              {" / ".join(k): round(1 / statistics.median(v), 1) for k, v in times.items()}, flush=True)

    ceiling = {prec: statistics.median(v) for prec, v in ceilings.items()}
    img_s = {name: 1 / statistics.median(v) for name, v in times.items()}
    rows = []
    for (prec, variant, side), value in img_s.items():
        base = img_s.get((prec, "eager-adam", side))
        rows.append({
            "precision": PRECISIONS[prec][0], "variant": variant, "side": side,
            "img_per_s": value, "vs_eager_adam": value / base if base else None,
            "ours_vs_lightly": value / img_s[(prec, variant, "lightly")] if side == "ours" else None,
            "pct_of_gemm_ceiling": 100 * value * gflop_per_image / ceiling[prec],
            "first_step_s": compile_s[(prec, variant, side)],
        })
    record = {
        "args": {k: _relative(v) for k, v in vars(args).items()}, "gflop_per_image": gflop_per_image,
        "gemm_ceiling_gflops": ceiling, "gemm_ceiling_runs": ceilings, "load_average_1min": loads, "rows": rows,
        "versions": {"torch": torch.__version__, "lightly": lightly.__version__, "python": platform.python_version()},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\ntorch {torch.__version__}, lightly {lightly.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, batch {args.batch} ({2 * args.batch} views) at {args.size} px, "
          f"{gflop_per_image:.3f} GFLOP per image; GEMM ceiling "
          + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in ceiling.items())
          + f"; 1-min load average {min(loads):.1f}-{max(loads):.1f}")
    print("| precision | variant | side | step img/s | vs eager Adam | ours/lightly | % of GEMM ceiling | first step s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['ours_vs_lightly']:.2f}x" if row["ours_vs_lightly"] else ""
        print(f"| {row['precision']} | {row['variant']} | {row['side']} | {row['img_per_s']:.1f} | "
              f"{row['vs_eager_adam']:.2f}x | {ratio} | {row['pct_of_gemm_ceiling']:.0f}% | {row['first_step_s']:.1f} |")


if __name__ == "__main__":
    main()
