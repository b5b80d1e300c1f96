"""The data stage: verified sources, safe extraction, layouts -> manifest, splits, decode-once cache.

Public entry points (one per pipeline rule, plus readers used by every later stage):

* :func:`defectbench.data.sources.fetch_dataset` (rule ``fetch_dataset``)
* :func:`defectbench.data.manifest.build_manifest` / :func:`read_manifest` (rule ``build_manifest``)
* :func:`defectbench.data.splits.write_split` / :func:`make_split` / :func:`labelled_subset` (rule ``make_split``)
* :func:`defectbench.data.cache.build_cache` / :func:`load_cache` (rule ``build_cache``)

Pixel rules (bit depth, transparency, resize policy) live in :mod:`defectbench.data.pixels`;
:mod:`defectbench.data.inspect` recognises a user's folder for ``defectbench new-dataset``.
"""

from defectbench.data.cache import build_cache, load_cache
from defectbench.data.manifest import build_manifest, read_manifest
from defectbench.data.sources import fetch_dataset
from defectbench.data.splits import labelled_subset, make_split, write_split

__all__ = [
    "build_cache",
    "build_manifest",
    "fetch_dataset",
    "labelled_subset",
    "load_cache",
    "make_split",
    "read_manifest",
    "write_split",
]
