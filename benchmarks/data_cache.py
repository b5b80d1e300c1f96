"""Data stage benchmark (one run): NEU manifest + 64 px cache build time, and images/s of training
batches read from the decode-once cache vs decoding the JPEG files.

    .venv/bin/python benchmarks/data_cache.py            # writes benchmarks/results/data_cache.md

Uses the shared archive ../shared/data/neu-steel.tar.gz through the normal data stage (sha256,
safe extraction, manifest with decode check, cache) in benchmarks/.work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np

from defectbench.data.cache import build_cache, decode_image, load_cache
from defectbench.data.manifest import build_manifest
from defectbench.data.sources import fetch_dataset, resolve_path
from defectbench.runtime import job_logging

from _report import machine_line, write_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NEU = {
    "source": {
        "kind": "archive",
        "path": str(ROOT.parent / "shared" / "data" / "neu-steel.tar.gz"),
        "sha256": "811f17755d04531bf6341da7f693a3e77e36bb631d10eea291138420b357d9c8",
    },
    "layout": "imagefolder",
}


def batches(n: int, batch: int, seed: int) -> list[np.ndarray]:
    """One epoch of shuffled batch indices (sorted inside a batch, as a sampler would fetch them)."""
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return [np.sort(perm[i : i + batch]) for i in range(0, n, batch)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "data_cache.md")
    args = ap.parse_args()

    load = os.getloadavg()
    work = HERE / ".work" / "data_cache"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with job_logging(None):
        t0 = time.perf_counter()
        marker = work / "resources/datasets/neu/.fetched.json"
        fetch_dataset("neu", NEU["source"], marker, workdir=work)
        t_fetch = time.perf_counter() - t0

        t0 = time.perf_counter()
        manifest = build_manifest(marker, NEU, work / "results/data/neu/manifest.parquet", workers=args.workers, project_root=work)
        t_manifest = time.perf_counter() - t0

        t0 = time.perf_counter()
        build_cache(manifest, args.size, work / f"results/data/neu/cache-{args.size}.npy",
                    work / f"results/data/neu/masks-{args.size}.npy", workers=args.workers, project_root=work)
        t_cache = time.perf_counter() - t0

    n = len(manifest)
    paths = [resolve_path(p, work) for p in manifest["path"]]
    cache = load_cache(work / f"results/data/neu/cache-{args.size}.npy")

    # One epoch each, same shuffled batches; both produce (B,S,S,3) uint8 arrays in memory.
    t0 = time.perf_counter()
    total = 0
    for idx in batches(n, args.batch, 0):
        total += int(np.ascontiguousarray(cache[idx]).shape[0])
    t_read = time.perf_counter() - t0
    assert total == n

    t0 = time.perf_counter()
    for idx in batches(n, args.batch, 0):
        np.stack([decode_image(paths[i], args.size) for i in idx])
    t_decode = time.perf_counter() - t0

    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        for idx in batches(n, args.batch, 0):
            np.stack(list(pool.map(lambda i: decode_image(paths[i], args.size), idx)))
    t_decode_par = time.perf_counter() - t0

    # sanity: decoding gives exactly what the cache holds
    assert np.array_equal(cache[5], decode_image(paths[5], args.size))

    rows = [
        ("fetch (sha256 + safe extraction of 25.7 MB tar.gz)", f"{t_fetch:.2f} s", ""),
        ("manifest (scan, sha256, full decode check of 1800 JPEGs)", f"{t_manifest:.2f} s", f"{n / t_manifest:.0f} img/s"),
        (f"cache {args.size} px (decode + resize, {args.workers} threads)", f"{t_cache:.2f} s", f"{n / t_cache:.0f} img/s"),
        ("**manifest + cache**", f"**{t_manifest + t_cache:.2f} s**", ""),
        (f"read 1 epoch from cache (mmap, batch {args.batch}, shuffled)", f"{t_read:.3f} s", f"**{n / t_read:,.0f} img/s**"),
        ("decode JPEG files per batch (1 thread)", f"{t_decode:.2f} s", f"**{n / t_decode:,.0f} img/s**"),
        (f"decode JPEG files per batch ({args.workers} threads)", f"{t_decode_par:.2f} s", f"{n / t_decode_par:,.0f} img/s"),
    ]
    lines = [
        "# Data stage: NEU manifest + cache build, cache reads vs JPEG decoding",
        "",
        f"Command: `.venv/bin/python benchmarks/data_cache.py` (one run, {time.strftime('%Y-%m-%d')}).",
        machine_line(load[0], os.getloadavg()[0]),
        f"Data: ../shared/data/neu-steel.tar.gz, {n} grey 200x200 JPEGs, resized to {args.size} px.",
        "",
        "| step | time | throughput |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Reading training batches from the decode-once cache is **{t_decode / t_read:,.0f}x** faster than decoding "
        f"the JPEG files on one thread ({t_decode_par / t_read:,.0f}x vs {args.workers} decoding threads). The "
        "cache holds exactly the decoded pixels (checked), so epochs after the first never touch JPEG again.",
        "",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
