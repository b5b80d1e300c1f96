"""defectbench's DDPM UNet vs diffusers' ``UNet2DModel`` it reproduces: one training step each.

Both sides are the same network with the same weights (diffusers' model loads our state dict),
the same input, timesteps, threads and precision; the step is forward + epsilon MSE + backward +
AdamW (``defectbench.optim.Adam``, decoupled decay) on both. The outputs are checked to be equal
before anything is timed. Sizes: the reference-scaled config's tiny UNet (16/32 channels at
32 px, where per-call Python overhead weighs) and a mid-size one (64/128/256 channels, attention
at the two coarsest levels, 64 px). Rounds alternate the sides; the record gives medians.

    python benchmarks/unet_vs_diffusers.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _report import machine_line, write_report
from defectbench.diffusion.ddpm import build_unet
from defectbench.optim import Adam

HERE = Path(__file__).resolve().parent
# name -> (image size, widths, layers per block, attention levels, batch)
SIZES = {
    "tiny (reference-scaled)": (32, [16, 32], 1, 1, 16),
    "mid": (64, [64, 128, 256], 2, 2, 8),
}


def diffusers_copy(ours: torch.nn.Module) -> torch.nn.Module:
    """diffusers' UNet2DModel from our config, carrying our weights."""
    from diffusers import UNet2DModel

    theirs = UNet2DModel(**ours.config)
    theirs.load_state_dict(ours.state_dict())
    return theirs


def step_seconds(model, call, x, t, eps, steps: int) -> float:
    """Median seconds of ``steps`` training steps (after one untimed)."""
    opt = Adam(model.parameters(), lr=1e-4, weight_decay=0.0, decoupled_weight_decay=True)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(call(model, x, t), eps).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (both sides)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "unet_vs_diffusers.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    sides = {"ours": lambda m, x, t: m(x, t), "diffusers": lambda m, x, t: m(x, t).sample}
    results: dict[tuple[str, str], list[float]] = {}
    models = {}
    for name, (size, widths, layers, attn, batch) in SIZES.items():
        torch.manual_seed(0)
        ours = build_unet(size, widths, layers, attn).train()
        theirs = diffusers_copy(ours).train()
        x = torch.randn(batch, 3, size, size)
        t = torch.randint(0, 1000, (batch,))
        eps = torch.randn_like(x)
        with torch.no_grad():
            if not torch.equal(ours(x, t), theirs(x, t).sample):
                sys.exit(f"{name}: the two networks disagree; nothing timed")
        models[name] = ({"ours": ours, "diffusers": theirs}, x, t, eps)
    for r in range(args.repeats):
        for name, (nets, x, t, eps) in models.items():
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                results.setdefault((name, side), []).append(step_seconds(nets[side], sides[side], x, t, eps, args.steps))
        print(f"round {r + 1}/{args.repeats} done", flush=True)
    lines = [
        "# Training step: defectbench's UNet vs diffusers' UNet2DModel (same network, same weights)",
        "",
        f"Command: `python benchmarks/unet_vs_diffusers.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}).",
        machine_line(load_start, os.getloadavg()[0]) + f" torch {torch.__version__}, {args.threads} threads, fp32, "
        f"{args.repeats} interleaved rounds of {args.steps} timed steps, medians. Outputs checked equal first.",
        "",
        "| UNet | ours ms/step | diffusers ms/step | diffusers / ours |",
        "|---|---|---|---|",
    ]
    for name in SIZES:
        a = statistics.median(results[(name, "ours")]) * 1e3
        b = statistics.median(results[(name, "diffusers")]) * 1e3
        size, widths, layers, attn, batch = SIZES[name]
        label = f"{name}: {size} px, widths {widths}, {layers} layers/level, attention at {attn}, batch {batch}"
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
