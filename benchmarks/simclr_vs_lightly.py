"""Our SimCLR pipeline vs lightly's standard SimCLR pipeline, side by side in ONE process (CPU).

Both train the same network (torchvision resnet18 without fc + projector 512-512-128, Adam) with
the same batch size on the same real NEU steel images, and every switch is applied to both sides:

* same images: the NEU JPEGs resized once to --size px; lightly reads them as PNG files of that
  size (so both random-resized-crop from the same --size px source), ours from the uint8 array
  (the pipeline's decode-once cache);
* same precision and memory format, in pairs: fp32, and bf16 autocast + channels_last;
* same torch threads (--threads) and the same number of DataLoader worker processes (--workers)
  producing the augmented batches (lightly: its dataset + ``SimCLRTransform``, per image in PIL;
  ours: ``defectbench.ssl.augment.augment_batch`` on whole batches in an ``IterableDataset``).

Reported: images/s end to end (data + augmentation + step) and for the training step alone
(forward + loss + backward + optimizer on a ready batch), the ratios ours/lightly per precision,
and the step's share of the machine's GEMM ceiling (FLOPs of one step counted by
``torch.utils.flop_counter``, ceiling = the faster of a square matmul and a 3x3 convolution at the
same precision and threads: :func:`gemm_gflops`).

Run (needs lightly next to the project, see benchmarks/results/simclr_vs_lightly.md):
    benchmarks/.work/venv-lightly/bin/python benchmarks/simclr_vs_lightly.py --images 768 --batch 64 --size 64
"""

from __future__ import annotations

import argparse
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from _options import add_run_options, add_step_options
from defectbench.models.projector import ContrastiveModel
from defectbench.ssl.augment import augment_batch, preset_params
from defectbench.ssl.losses import nt_xent
from defectbench.optim import Adam
from defectbench.train import compiled

ROOT = Path(__file__).resolve().parent
ARCHIVE = ROOT.parents[1] / "shared" / "data" / "neu-steel.tar.gz"


E2E_TARGET = 1.5  # issue 14: ours/lightly end to end at 2 threads


def extract_subset(n: int, folder: Path) -> list[Path]:
    """The first n/6 images of each NEU class as files (lightly reads an image folder)."""
    per_class = n // 6
    paths: list[Path] = []
    counts: dict[str, int] = {}
    with tarfile.open(ARCHIVE) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name):
            cls = Path(m.name).parent.name
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            out = folder / cls / Path(m.name).name
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
            paths.append(out)
    return paths


def resized(paths: list[Path], size: int) -> np.ndarray:
    """The images decoded and resized to size x size once (the pipeline's decode-once cache), uint8 NHWC."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths])


# lightly's SimCLRTransform defaults: jitter (.8,.8,.8,.2) p .8, grayscale .2, blur p .5, hflip .5, scale .08-1
LIGHTLY_RECIPE = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}


def ours_loss(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    return nt_xent(z0, z1, temperature=0.5)


def repeat_forever(batch):
    while True:
        yield batch


def build_model(seed: int = 0) -> ContrastiveModel:
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    return ContrastiveModel(net, 512, [512, 128])


def timed_steps(step, batches, warmup: int, steps: int) -> list[float]:
    """Seconds per image of each of ``steps`` iterations of step(next batch), after ``warmup`` ones.

    Each iteration's time includes fetching its batch (data + augmentation) when ``batches``
    produces them on the fly. The machine is shared, so the caller takes medians over all
    iterations of all repeats (robust to other jobs' bursts) rather than a total.
    """
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        n = step(next(it))
        out.append((time.perf_counter() - t0) / n)
    # Shut the DataLoader workers down now: left alive they keep prefetching batches and would
    # steal CPU from whatever is timed next.
    if hasattr(it, "close"):
        it.close()
    return out


def _best_gflops(fn, flop: float, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flop / best / 1e9


def gemm_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """The machine's compute ceiling at ``dtype`` with the current torch threads: best-of GFLOP/s of
    the faster of an n x n x n matmul and a 3x3 convolution (batch 64, 256 -> 256 channels, 16 px,
    channels_last).

    The two take different libraries on CPU (matmul: MKL's GEMM; convolution: oneDNN), and on AMD
    CPUs MKL's fp32 GEMM reaches well under half of what oneDNN's convolutions do (2026-12-02,
    Zen 5 EPYC, 2 threads: 170 vs 449 GFLOP/s), so a matmul alone is no ceiling for a ResNet step.
    """
    x, y = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    matmul = _best_gflops(lambda: x @ y, 2 * n**3, reps)
    b, c, s = 64, 256, 16
    img = torch.randn(b, c, s, s).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
    conv = _best_gflops(lambda: torch.nn.functional.conv2d(img, weight, padding=1), 2 * b * c * c * 9 * s * s, reps)
    return max(matmul, conv)


def make_step(loss_fn, amp: bool, channels_last: bool, fused: bool = False, compile_model: bool = False):
    """One SimCLR training step on a fresh model: forward both views as one batch, loss, backward, Adam.

    ``fused`` and ``compile_model`` are applied through defectbench's own hooks
    (:class:`defectbench.optim.Adam`, :func:`defectbench.train.compiled`: torch's fused Adam kernel
    and ``torch.compile``), to whichever side's loss ``loss_fn`` is, so both sides get the same switch.
    """
    cpu = torch.device("cpu")
    model = build_model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fused:
        opt = Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    forward = compiled(model, compile_model, cpu, "--compile")

    def step(batch):
        x0, x1 = batch
        x = torch.cat([x0, x1])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            _, z = forward(x)
            z0, z1 = z.float().chunk(2)
            loss = loss_fn(z0, z1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(x0)

    return step


class OurBatches(torch.utils.data.IterableDataset):
    """Endless augmented view pairs of shuffled batches (each worker with its own generator)."""

    def __init__(self, images: torch.Tensor, batch: int, params):
        self.images, self.batch, self.params = images, batch, params

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        gen = torch.Generator().manual_seed(0 if info is None else info.id + 1)
        b = self.batch
        while True:
            perm = torch.randperm(len(self.images), generator=gen)
            for i in range(len(self.images) // b):
                x = self.images[perm[i * b:(i + 1) * b]]
                yield augment_batch(x, self.params, gen), augment_batch(x, self.params, gen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=768)
    add_run_options(ap, size=64, batch=64)
    add_step_options(ap, steps=8, warmup=2, repeats=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, both sides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import lightly
    from lightly.data import LightlyDataset
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    paths = extract_subset(args.images, ROOT / ".work" / "neu-images")
    b, s = args.batch, args.size

    # One image pipeline for both: decode + resize once; lightly reads those pixels as PNG files.
    t0 = time.perf_counter()
    cache = resized(paths, s)
    decode_s = time.perf_counter() - t0
    folder = ROOT / ".work" / f"neu-{s}px"
    for p, img in zip(paths, cache):
        out = folder / p.parent.name / f"{p.stem}.png"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(out)
    images = torch.from_numpy(cache)

    # --- lightly's standard pipeline
    dataset = LightlyDataset(input_dir=str(folder), transform=SimCLRTransform(input_size=s))
    lightly_loss = NTXentLoss(temperature=0.5)

    def lightly_batches():
        while True:
            loader = torch.utils.data.DataLoader(dataset, batch_size=b, shuffle=True, drop_last=True,
                                                 num_workers=args.workers, persistent_workers=False)
            for (x0, x1), _, _ in loader:
                yield x0, x1

    # --- ours: batched augmentation of the uint8 array, in the same number of workers
    params = preset_params("color", LIGHTLY_RECIPE)

    def our_batches():
        yield from torch.utils.data.DataLoader(OurBatches(images, b, params), batch_size=None,
                                               num_workers=args.workers)

    fixed = next(iter(OurBatches(images, b, params)))

    # FLOPs of one training step (fp32 count; autocast does not change the op count)
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        make_step(ours_loss, False, False)(fixed)
    gflop_per_image = counter.get_total_flops() / b / 1e9

    precisions = args.precisions.split(",")
    configs = {}
    for prec in precisions:
        amp = cl = prec == "bf16"
        label = "fp32" if prec == "fp32" else "bf16 + channels_last"
        configs[f"lightly ({label})"] = (prec, lightly_loss, amp, cl, lightly_batches)
        configs[f"ours ({label})"] = (prec, ours_loss, amp, cl, our_batches)
    ceilings: dict[str, list[float]] = {prec: [] for prec in precisions}
    results: dict[str, dict[str, list[float]]] = {k: {"end_to_end": [], "step": []} for k in configs}
    for r in range(args.repeats):  # interleaved repeats: the machine is shared, take medians
        for name, (prec, loss_fn, amp, cl, batches) in configs.items():
            if name.startswith("lightly"):  # the ceiling next to each pair: the load drifts
                ceilings[prec].append(gemm_gflops(torch.float32 if prec == "fp32" else torch.bfloat16))
            results[name]["end_to_end"] += timed_steps(make_step(loss_fn, amp, cl), batches(), args.warmup, args.steps)
            results[name]["step"] += timed_steps(make_step(loss_fn, amp, cl), repeat_forever(fixed), args.warmup, args.steps)
        print(f"repeat {r + 1}/{args.repeats}:", {k: {m: round(1 / statistics.median(v), 1) for m, v in d.items()}
                                                 for k, d in results.items()}, flush=True)

    # images/s from the median seconds per image over every timed iteration of every repeat
    med = {k: {m: 1 / statistics.median(v) for m, v in d.items()} for k, d in results.items()}
    ceiling = {prec: statistics.median(v) for prec, v in ceilings.items()}
    print(f"\nlightly {lightly.__version__}, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, {args.workers} DataLoader workers "
          f"both sides, {len(paths)} NEU images at {s} px, batch {b}, resnet18; one-time decode + resize "
          f"{decode_s:.2f}s; one step = {gflop_per_image:.3f} GFLOP per image; GEMM ceiling "
          + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in ceiling.items()))
    print("| pipeline | end to end img/s | ratio ours/lightly | step alone img/s | ratio ours/lightly | step % of GEMM ceiling |")
    print("|---|---|---|---|---|---|")
    for name, (prec, *_rest) in configs.items():
        m = med[name]
        base = med[name.replace("ours", "lightly")]
        pct = 100 * m["step"] * gflop_per_image / ceiling[prec]
        print(f"| {name} | {m['end_to_end']:.1f} | {m['end_to_end'] / base['end_to_end']:.2f}x | {m['step']:.1f} | "
              f"{m['step'] / base['step']:.2f}x | {pct:.0f}% |")

    # With identical networks, precision and threads the step is the same work on both sides, so a
    # data pipeline can at best hide all of its own cost: ours end to end <= the faster step.
    print(f"\nBound on ours/lightly end to end with identical switches (the faster of the two steps / "
          f"lightly end to end), against the target {E2E_TARGET}x:")
    for name in configs:
        if name.startswith("ours"):
            light = med[name.replace("ours", "lightly")]
            bound = max(med[name]["step"], light["step"]) / light["end_to_end"]
            verdict = "within reach" if bound >= E2E_TARGET else "out of reach at this size, threads and workers"
            print(f"- {name[len('ours '):]}: measured {med[name]['end_to_end'] / light['end_to_end']:.2f}x, "
                  f"bound {bound:.2f}x: target {verdict}")


if __name__ == "__main__":
    main()
