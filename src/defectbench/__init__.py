"""defectbench: reproducible industrial-defect learning (DiffCL and contrastive baselines,
SimCLR anomaly scoring, PatchCore, DDAD, anomaly clustering) as one Snakemake pipeline.

``__version__`` is the package version only: which jobs a library change reruns is decided by
code fingerprints (:mod:`defectbench.fingerprint`), not by bumping it.
"""

__version__ = "0.1.0"
