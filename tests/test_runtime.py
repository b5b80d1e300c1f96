"""Job plumbing: atomic writes leave nothing behind on failure; provenance is recorded."""

import json

import pytest
import torch

from defectbench.runtime import (
    DefectbenchError,
    atomic_path,
    config_hash,
    effective_amp,
    load_torch,
    pick_device,
    save_torch,
    write_metrics,
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
