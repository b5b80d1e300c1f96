"""Job plumbing: atomic writes leave nothing behind on failure; provenance is recorded."""

import json
import os
import stat
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from defectbench.config import with_dataset_defaults
from defectbench.data.extract import safe_extract
from defectbench.data.layouts import scan_deeppcb
from defectbench.runtime import (
    DefectbenchError,
    atomic_dir,
    atomic_path,
    config_hash,
    effective_amp,
    load_torch,
    pick_device,
    save_torch,
    write_json,
    write_metrics,
    write_parquet,
)


class Evil:
    """Any pickled object that is not a tensor/container: must not be unpickled."""


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_honour_the_umask(tmp_path, umask, deeppcb_root):
    """Every atomic writer leaves files 0666 & ~umask and directories 0777 & ~umask (0644/0755 under
    umask 022, 0664/0775 under 002), as any other tool would, so a team can read the results."""
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    write_json(tmp_path / "out" / "metrics.json", {"a": 1})
    write_parquet(tmp_path / "out" / "table.parquet", pd.DataFrame({"a": [1]}))
    save_torch(tmp_path / "out" / "encoder.pt", {"w": torch.zeros(2)})
    with atomic_path(tmp_path / "out" / "cache.npy") as tmp:
        np.save(tmp, np.zeros(3))
    with atomic_dir(tmp_path / "out" / "model") as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
        save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")  # safetensors itself writes 0600
    for name in ("metrics.json", "table.parquet", "encoder.pt", "cache.npy", "model/weights.bin",
                 "model/model.safetensors"):
        assert _mode(tmp_path / "out" / name) == file_mode, name
    assert _mode(tmp_path / "out" / "model") == dir_mode

    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(deeppcb_root, arcname="deeppcb")
    target = safe_extract(archive, tmp_path / "extracted")
    assert _mode(target) == dir_mode
    scan_deeppcb(target / "deeppcb", with_dataset_defaults({"layout": "deeppcb", "crop_padding": 0}), tmp_path / "pcb")
    crops = tmp_path / "pcb" / "crops"
    assert _mode(crops) == dir_mode and {_mode(p) for p in crops.iterdir()} == {file_mode}


def test_config_hash_ignores_key_order_but_not_values():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_write_metrics_records_provenance(tmp_path):
    rec = write_metrics(
        tmp_path / "m.json", stage="anomaly", metrics={"image_auroc": 0.75}, config={"protocol": "clean", "k": 5},
        keys={"dataset": "d", "seed": 0}, device="cpu", wall_time_s=1.5,
    )
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert on_disk["config_hash"] == config_hash({"protocol": "clean", "k": 5})
    assert torch.__version__.startswith(on_disk["versions"]["torch"])
    assert on_disk["protocol"] == "clean" and on_disk["metrics"]["image_auroc"] == 0.75


def test_torch_files_load_weights_only(tmp_path):
    save_torch(tmp_path / "w.pt", {"w": torch.ones(2), "name": "resnet18"})
    assert load_torch(tmp_path / "w.pt")["name"] == "resnet18"

    torch.save({"obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DefectbenchError, match="evil.pt"):
        load_torch(tmp_path / "evil.pt")


def test_device_and_amp_fall_back_on_cpu():
    dev = pick_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert effective_amp(torch.device("cpu"), "fp16") == "bf16"
    assert effective_amp(torch.device("cpu"), "none") == "none"
    with pytest.raises(DefectbenchError, match="amp"):
        effective_amp(torch.device("cpu"), "int8")


@pytest.mark.parametrize("native", [False, True])
def test_emulated_bf16_on_cpu_is_said_once(monkeypatch, caplog, native):
    from defectbench import runtime

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    runtime._warn_if_bf16_emulated.cache_clear()
    with caplog.at_level("WARNING", logger="defectbench"):
        for _ in range(3):
            assert effective_amp(torch.device("cpu"), "bf16") == "bf16"
        assert effective_amp(torch.device("cpu"), "none") == "none"
    warnings = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == (0 if native else 1)
    runtime._warn_if_bf16_emulated.cache_clear()
