"""The parts every benchmark record shares: the machine line and writing (and printing) the record.

Benchmarks run as scripts (``python benchmarks/<name>.py``), so this sits beside them and is
imported as ``_report``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_line(load_start: float, load_end: float) -> str:
    """``Machine: ...`` of a record: architecture, cores, the load average around the timing, Python."""
    return (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (load average "
            f"{load_start:.1f} at start, {load_end:.1f} at end), Python {platform.python_version()}.")


def write_report(out: Path, lines: list[str]) -> None:
    """Write the record's lines to ``out`` (creating its folder) and print them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
