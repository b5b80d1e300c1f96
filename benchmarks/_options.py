"""Command-line options the side-by-side benchmarks share, declared once with their meaning."""

from __future__ import annotations

import argparse


def add_run_options(ap: argparse.ArgumentParser, *, size: int, batch: int, threads: int = 2) -> None:
    """Image size, batch size and torch threads: the switches both sides of a comparison get."""
    ap.add_argument("--size", type=int, default=size, help="image side in px (both sides)")
    ap.add_argument("--batch", type=int, default=batch, help="batch size (both sides)")
    ap.add_argument("--threads", type=int, default=threads, help="torch CPU threads (both sides)")


def add_step_options(ap: argparse.ArgumentParser, *, steps: int, warmup: int, repeats: int) -> None:
    """The SimCLR step benchmarks' timing (timed steps per measurement, untimed warm-up steps
    before them, interleaved repeats) and the precision pairs they run."""
    ap.add_argument("--steps", type=int, default=steps, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed steps before them")
    ap.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds over all variants (medians)")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="comma-separated: fp32 (channels_first), bf16 (+ channels_last); step_ceiling.py also fp32cl")
