"""The registries: one per family of things a config names (the single list of valid names).

Each entry says what a name means: its implementation (``"module:function"``, imported only
when a job needs it, so reading the registry at DAG time costs no torch import), its parameters
as JSON-schema fragments with their defaults, and what it reads beyond its stage's usual inputs.
The config schema's enums and per-method parameter sections (:func:`defectbench.config.load_schema`),
the rules' wildcard constraints, the grid and the per-job params (:mod:`defectbench.params`)
all take their lists from here. Adding a method = its function + one entry below + its spec.

>>> names("anomaly_scorers")
['knn', 'mahalanobis', 'mahalanobis_shrinkage', 'cosine']
>>> implementation("contrastive_methods", "simclr").__name__
'nt_xent'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from defectbench.runtime import DefectbenchError


@dataclass(frozen=True)
class Entry:
    """One registered name.

    ``params``: JSON-schema fragments (with ``default``) of the entry's own parameters;
    ``reads``: what it reads beyond the stage's usual inputs (``labels``, ``views``,
    ``references``; a ``use_views`` parameter makes the views optional) and the keys of its
    config section it reads (scorers, weightings, layouts);
    ``fixed``: keyword arguments the implementation always gets (a variant of a shared function).
    """

    implementation: str
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reads: tuple[str, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def _num(default: float, **bounds: Any) -> dict[str, Any]:
    return {"type": "number", "default": default, **bounds}


_LOSSES = "defectbench.ssl.losses"
_VIEW_PARAMS = {
    "real_prob": _num(0.5, minimum=0, maximum=1, description="probability that view 2 is the real image"),
}

# Contrastive methods (specs A.2, A.3). `reads: temperature` = the loss takes the shared
# `contrastive.temperature` (methods with their own temperature parameter do not read it).
CONTRASTIVE_METHODS: dict[str, Entry] = {
    "simclr": Entry(f"{_LOSSES}:nt_xent", reads=("temperature",), summary="SimCLR, NT-Xent"),
    "supcon": Entry(f"{_LOSSES}:supcon", {"temperature": _num(0.1, exclusiveMinimum=0)}, ("labels",),
                    summary="supervised contrastive"),
    "dcl": Entry(f"{_LOSSES}:dcl", {"tau_plus": _num(0.1, minimum=0, exclusiveMaximum=1)}, ("temperature",),
                 summary="debiased"),
    "hcl": Entry(f"{_LOSSES}:hcl", {"tau_plus": _num(0.1, minimum=0, exclusiveMaximum=1), "beta": _num(1.0, minimum=0)},
                 ("temperature",), summary="hard negatives"),
    "adnce": Entry(f"{_LOSSES}:adnce", {"temperature": _num(0.3, exclusiveMinimum=0), "mu": _num(0.5),
                                        "sigma": _num(1.0, exclusiveMinimum=0)}, summary="adjusted InfoNCE"),
    "decoupled": Entry(f"{_LOSSES}:decoupled", {"temperature": _num(0.1, exclusiveMinimum=0)},
                       summary="decoupled contrastive"),
    "fairkl": Entry(
        f"{_LOSSES}:fairkl",
        {"temperature": _num(0.1, exclusiveMinimum=0), "epsilon": _num(0.1), "weight": _num(1.0, minimum=0),
         "kld": _num(1.0, minimum=0),
         "use_views": {"type": "boolean", "default": False,
                       "description": "bias label = real vs diffusion view (reads the views; needs diffusion)"},
         **_VIEW_PARAMS},
        ("labels",), summary="eps-SupInfoNCE + FairKL"),
    "gca": Entry(f"{_LOSSES}:gca", {"epsilon": _num(0.2, exclusiveMinimum=0),
                                    "iterations": {"type": "integer", "minimum": 1, "default": 10},
                                    "lam": _num(0.01, minimum=0), "q": _num(0.6, minimum=0), "r1": _num(1.0, minimum=0),
                                    "r2": _num(0.2, minimum=0)}, summary="GCA-UOT"),
    "diffcl": Entry(f"{_LOSSES}:nt_xent",
                    {**_VIEW_PARAMS, "variant": {"enum": ["views", "adainf"], "default": "views"}},
                    ("views", "temperature"), summary="SimCLR with diffusion views (reconstruction)"),
}
# Keys of a method's params that configure the data side (which views), not the loss.
VIEW_PARAM_KEYS = frozenset({"real_prob", "variant", "use_views"})

_SCORERS = "defectbench.anomaly.scorers"
# Image-level anomaly scorers (specs B.1); `reads` = keys of the `anomaly` section it reads.
ANOMALY_SCORERS: dict[str, Entry] = {
    "knn": Entry(f"{_SCORERS}:score_knn", reads=("knn_k",), summary="mean cosine distance to the k nearest"),
    "mahalanobis": Entry(f"{_SCORERS}:score_mahalanobis", fixed={"shrinkage": False}, summary="pseudo-inverse covariance"),
    "mahalanobis_shrinkage": Entry(f"{_SCORERS}:score_mahalanobis", fixed={"shrinkage": True},
                                   summary="Ledoit-Wolf covariance"),
    "cosine": Entry(f"{_SCORERS}:score_cosine", summary="1 - cosine to the mean feature"),
}
# Scorer keyword argument <- anomaly-section key.
SCORER_ARGUMENTS = {"knn_k": "k"}

# Feature sources of the image-level scorers and the probes: every contrastive method (its
# encoder.pt) and the untrained controls (defectbench.features.CONTROL_SOURCES): the backbone at
# random init, and the backbone with the section's `pretrained` weights.
FEATURE_SOURCES: dict[str, Entry] = {
    **{name: Entry("defectbench.features:load_feature_source", reads=("encoder",), summary=f"{name} encoder")
       for name in CONTRASTIVE_METHODS},
    "random": Entry("defectbench.features:load_feature_source", summary="the backbone at random init (the seed's draw)"),
    "pretrained": Entry("defectbench.features:load_feature_source", reads=("pretrained",),
                        summary="the backbone with the `pretrained` weights, untrained"),
}

# Patch-embedding sources of anomaly clustering.
CLUSTERING_FEATURES: dict[str, Entry] = {
    "patchcore": Entry("defectbench.anomaly.embedding:embed_patches", summary="patchcore.backbone patch embeddings"),
}

_CLUSTERING = "defectbench.clustering"
# Clustering weightings (specs E.2); `references` = nominal images of the anomaly split.
CLUSTERING_WEIGHTINGS: dict[str, Entry] = {
    "unsupervised": Entry(f"{_CLUSTERING}:unsupervised_weights", reads=("tau",), summary="AC unsupervised"),
    "supervised": Entry(f"{_CLUSTERING}:supervised_weights", reads=("tau", "train_ratio", "references"),
                        summary="AC supervised (nominal references)"),
    "average": Entry(f"{_CLUSTERING}:average_weights", summary="uniform patch weights"),
}

_LAYOUTS = "defectbench.data.layouts"
# Dataset layouts; `reads` = keys of the dataset entry the scanner reads.
LAYOUTS: dict[str, Entry] = {
    "imagefolder": Entry(f"{_LAYOUTS}:scan_imagefolder", reads=("classes", "nominal_classes"), summary="one folder per class"),
    "magnetic_tile": Entry(f"{_LAYOUTS}:scan_magnetic_tile", summary="Magnetic-tile-defect archive"),
    "deeppcb": Entry(f"{_LAYOUTS}:scan_deeppcb", reads=("crop_padding", "templates"), summary="DeepPCB boxes, cropped"),
    "elpv": Entry(f"{_LAYOUTS}:scan_elpv", summary="ELPV (PyPI elpv-dataset)"),
    "mvtec": Entry(f"{_LAYOUTS}:scan_mvtec", reads=("category",), summary="MVTec AD category"),
    "visa": Entry(f"{_LAYOUTS}:scan_visa", reads=("category",), summary="VisA category (1cls split)"),
    "csv": Entry(f"{_LAYOUTS}:scan_csv", reads=("classes", "nominal_classes", "labels_file"),
                 summary="a folder plus a labels CSV"),
    "yolo": Entry(f"{_LAYOUTS}:scan_yolo", reads=("classes",), summary="YOLO segmentation polygons -> masks"),
}

FAMILIES: dict[str, dict[str, Entry]] = {
    "contrastive_methods": CONTRASTIVE_METHODS,
    "anomaly_scorers": ANOMALY_SCORERS,
    "feature_sources": FEATURE_SOURCES,
    "clustering_features": CLUSTERING_FEATURES,
    "clustering_weightings": CLUSTERING_WEIGHTINGS,
    "layouts": LAYOUTS,
}


def family(name: str) -> dict[str, Entry]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise DefectbenchError(f"registry: no family {name!r}; families: {', '.join(FAMILIES)}") from None


def names(family_name: str) -> list[str]:
    """The registered names of a family, in registration order."""
    return list(family(family_name))


def entry(family_name: str, name: str) -> Entry:
    entries = family(family_name)
    if name not in entries:
        raise DefectbenchError(f"unknown {family_name.replace('_', ' ')[:-1]} {name!r}; choose from {', '.join(entries)}")
    return entries[name]


def implementation(family_name: str, name: str) -> Callable[..., Any]:
    """The registered function of ``name`` (imports its module)."""
    module, _, attr = entry(family_name, name).implementation.partition(":")
    return getattr(importlib.import_module(module), attr)


def defaults(family_name: str, name: str) -> dict[str, Any]:
    """An entry's parameter defaults (as the schema fills them)."""
    return {key: spec["default"] for key, spec in entry(family_name, name).params.items()}


def wildcard_pattern(family_name: str) -> str:
    """A Snakemake wildcard constraint matching exactly the family's names."""
    return "|".join(sorted(names(family_name), key=len, reverse=True))


def reads_views(method: str, method_params: dict[str, Any], diffusion_enabled: bool) -> bool:
    """Whether contrastive ``method`` reads the diffusion views: always when it declares ``views``,
    else when it has a ``use_views`` parameter set (fairkl); never with diffusion disabled."""
    registered = entry("contrastive_methods", method)
    return diffusion_enabled and ("views" in registered.reads or bool(method_params.get("use_views")))
