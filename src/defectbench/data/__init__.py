"""The data stage: verified sources, safe extraction, layouts -> manifest, splits, decode-once cache.

Public entry points (one per pipeline rule, plus readers used by every later stage):

* :func:`defectbench.data.sources.fetch_dataset` (rule ``fetch_dataset``)
* :func:`defectbench.data.manifest.build_manifest` / :func:`read_manifest` (rule ``build_manifest``)
* :func:`defectbench.data.splits.write_split` / :func:`make_split` / :func:`labelled_subset` (rule ``make_split``)
* :func:`defectbench.data.cache.build_cache` / :func:`load_cache` (rule ``build_cache``)

Pixel rules (bit depth, transparency, resize policy) live in :mod:`defectbench.data.pixels`;
:mod:`defectbench.data.inspect` recognises a user's folder for ``defectbench new-dataset``.

Import them from their modules: this ``__init__`` re-exports nothing, because a job's code
fingerprint (:mod:`defectbench.fingerprint`) follows what ``__init__`` imports, and a re-export
would make every job that reads a split depend on the layout scanners too.
"""
