"""The three things every stage uses: the stage-job helper, the split/cache reader, the checkpoint policy."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pandas as pd
import pytest
import torch

from defectbench.data.cache import SplitCache, read_split_images
from defectbench.runtime import DefectbenchError, config_hash, stage_job
from defectbench.train import checkpointed, train_loop


# ----------------------------------------------------------------------------- stage_job
def test_stage_job_sets_threads_device_amp_and_seed(caplog):
    before = torch.get_num_threads()
    cfg = {"device": "cpu", "x": 1}
    try:
        with caplog.at_level(logging.INFO, logger="defectbench"):
            with stage_job(stage="pretraining", cfg=cfg, keys={"dataset": "d", "seed": 3}, seed=3, threads=1,
                           amp="fp16") as job:
                assert torch.get_num_threads() == 1
                drawn = (random.random(), float(np.random.rand()), float(torch.rand(())))
        assert str(job.device) == "cpu" and job.amp == "bf16"  # no fp16 autocast on CPU
        random.seed(3)
        np.random.seed(3)
        torch.manual_seed(3)
        assert drawn == (random.random(), float(np.random.rand()), float(torch.rand(())))
    finally:
        torch.set_num_threads(before)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("pretraining job dataset=d seed=3: device cpu, amp bf16") for m in messages)
    assert any(m.startswith("pretraining job dataset=d seed=3: done in") for m in messages)


def test_stage_job_without_a_seed_leaves_the_generators_alone():
    torch.manual_seed(11)
    expected = float(torch.rand(()))
    torch.manual_seed(11)
    with stage_job(stage="anomaly", cfg={"device": "cpu"}, keys={"dataset": "d"}, seed=None) as job:
        assert float(torch.rand(())) == expected
    assert job.seed is None and job.amp == "none"


def test_stage_job_applies_the_deterministic_key_to_every_torch_stage():
    """`deterministic: true` reaches every torch job's params (and only then), and stage_job turns
    torch's deterministic algorithms on for it and off for a slice without the key."""
    from defectbench.config import validate_config
    from defectbench.params import torch_job

    config = validate_config({"datasets": {"d": {"source": {"kind": "directory", "path": "x"}, "layout": "imagefolder"}},
                              "device": "cpu", "deterministic": True})
    assert torch_job(config) == {"device": "cpu", "deterministic": True}
    assert torch_job({**config, "deterministic": False}) == {"device": "cpu"}
    try:
        with stage_job(stage="anomaly", cfg=torch_job(config), keys={}, seed=None):
            assert torch.are_deterministic_algorithms_enabled()
        with stage_job(stage="anomaly", cfg={"device": "cpu"}, keys={}, seed=None):
            assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_stage_job_start_up_leaves_torch_compiler_unloaded():
    """A torch job without `deterministic` never calls torch.use_deterministic_algorithms (it
    imports torch._inductor, torch._dynamo and sympy: 1.4 s of every job's start-up); with the key
    the flag is on."""
    import subprocess
    import sys

    code = ("import json, sys, torch\n"
            "from defectbench.runtime import stage_job\n"
            "cfg = json.loads(sys.argv[1])\n"
            "with stage_job(stage='anomaly', cfg=cfg, keys={}, seed=0):\n"
            "    on = torch.are_deterministic_algorithms_enabled()\n"
            "print(json.dumps([on] + [m in sys.modules for m in ('torch._inductor', 'torch._dynamo', 'sympy')]))\n")
    loaded = {}
    for deterministic in (False, True):
        cfg = {"device": "cpu", **({"deterministic": True} if deterministic else {})}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, check=True)
        loaded[deterministic] = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded[False] == [False, False, False, False]
    assert loaded[True][0] is True


def test_stage_job_refuses_a_missing_cuda_device():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(DefectbenchError, match="^device: 'cuda' was requested"):
        with stage_job(stage="anomaly", cfg={"device": "cuda"}, keys={}, seed=0):
            pass


def test_stage_job_writes_the_metrics_record(tmp_path):
    cfg = {"device": "cpu", "protocol": "faithful", "lr": 0.1}
    with stage_job(stage="classification", cfg=cfg, keys={"dataset": "d", "method": "m", "seed": 0}, seed=0) as job:
        record = job.write_metrics(tmp_path / "a" / "metrics.json", metrics={"accuracy": 1, "loss": None},
                                   keys={"labels_pct": 10.0}, extra={"amp": job.amp})
        elapsed = job.elapsed()
        shared = job.write_metrics(tmp_path / "b.json", metrics={"accuracy": 0.5}, wall_time_s=0.25)
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert {k: saved[k] for k in ("stage", "dataset", "method", "seed", "labels_pct", "protocol", "device")} == {
        "stage": "classification", "dataset": "d", "method": "m", "seed": 0, "labels_pct": 10.0,
        "protocol": "faithful", "device": "cpu"}
    assert saved["metrics"] == {"accuracy": 1.0, "loss": None}
    assert saved["config"] == cfg and saved["config_hash"] == config_hash(cfg)
    assert saved["extra"] == {"amp": "none"}
    assert 0 <= saved["wall_time_s"] <= elapsed  # measured by the helper since the job started
    assert shared["wall_time_s"] == 0.25 and "labels_pct" not in shared  # extra keys are per record


def test_stage_job_failure_propagates_without_a_done_line(caplog):
    with caplog.at_level(logging.INFO, logger="defectbench"), pytest.raises(DefectbenchError, match="boom"):
        with stage_job(stage="clustering", cfg={"device": "cpu"}, keys={"dataset": "d"}, seed=0):
            raise DefectbenchError("boom")
    assert not any("done in" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- the split/cache reader
def _split_and_cache(tmp_path, n=6, size=4):
    """Image i is filled with the value 10 * i, so a read image says which cache row it is."""
    images = (np.arange(n, dtype=np.uint8) * 10)[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
    np.save(tmp_path / "cache.npy", images)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 0, 0] = np.arange(n) % 2  # odd rows have one defect pixel
    np.save(tmp_path / "masks.npy", masks)
    split = pd.DataFrame({"row": [5, 1, 0, 3, 2], "subset": ["test", "train", "holdout", "train", "test"],
                          "label": [1, 0, 0, 0, 1], "label_priority": [np.nan, 0.5, np.nan, 0.0, np.nan]})
    split.to_parquet(tmp_path / "split.parquet")
    return tmp_path / "split.parquet", tmp_path / "cache.npy", tmp_path / "masks.npy"


def test_reader_returns_rows_labels_images_masks_sorted_by_row(tmp_path):
    split_path, cache_path, masks_path = _split_and_cache(tmp_path)
    test = read_split_images(split_path, cache_path, "holdout", "test", masks_path=masks_path)
    assert test.row_ids.tolist() == [0, 2, 5] and test.labels.tolist() == [0, 1, 1] and len(test) == 3
    assert test.images[:, 0, 0, 0].tolist() == [0, 20, 50] and test.images.flags["C_CONTIGUOUS"]
    assert test.masks.dtype == bool and test.masks[:, 0, 0].tolist() == [False, False, True]
    assert test.rows.index.tolist() == [0, 1, 2]
    train = read_split_images(split_path, cache_path, "train")
    assert train.row_ids.tolist() == [1, 3] and train.masks is None


def test_reader_take_reads_any_rows_of_the_split(tmp_path):
    split_path, cache_path, _ = _split_and_cache(tmp_path)
    reader = SplitCache(split_path, cache_path, required=("row", "subset", "label", "label_priority"))
    assert reader.split["row"].tolist() == [0, 1, 2, 3, 5]
    labelled = reader.take(reader.split[reader.split["label_priority"] < 0.5])
    assert labelled.row_ids.tolist() == [3] and labelled.images[0, 0, 0, 0] == 30


def test_reader_errors_name_the_file(tmp_path):
    split_path, cache_path, masks_path = _split_and_cache(tmp_path)
    with pytest.raises(DefectbenchError, match=r"missing\.parquet: split file not found"):
        read_split_images(tmp_path / "missing.parquet", cache_path, "train")
    with pytest.raises(DefectbenchError, match=r"nocache\.npy: cache not found"):
        read_split_images(split_path, tmp_path / "nocache.npy", "train")
    with pytest.raises(DefectbenchError, match=r"split\.parquet: 2 train row\(s\), at least 3 needed"):
        read_split_images(split_path, cache_path, "train", min_rows=3)
    np.save(tmp_path / "small.npy", np.zeros((4, 4, 4, 3), np.uint8))  # row 5 is beyond it
    with pytest.raises(DefectbenchError, match=r"split\.parquet: rows 0\.\.5 out of range of .*small\.npy \(4 images\)"):
        read_split_images(split_path, tmp_path / "small.npy", "train")
    np.save(tmp_path / "grey.npy", np.zeros((6, 4, 4), np.uint8))
    with pytest.raises(DefectbenchError, match=r"grey\.npy: expected \(N,S,S,3\) images"):
        read_split_images(split_path, tmp_path / "grey.npy", "train")
    np.save(tmp_path / "masks8.npy", np.zeros((6, 8, 8), np.uint8))
    with pytest.raises(DefectbenchError, match=r"masks8\.npy: masks \(6, 8, 8\) do not match"):
        read_split_images(split_path, cache_path, "test", masks_path=tmp_path / "masks8.npy")
    pd.DataFrame({"row": [0]}).to_parquet(tmp_path / "bare.parquet")
    with pytest.raises(DefectbenchError, match=r"bare\.parquet: split lacks columns \['label', 'subset'\]"):
        read_split_images(tmp_path / "bare.parquet", cache_path, "train")


# ----------------------------------------------------------------------------- the checkpoint policy
def test_checkpoint_named_by_job_identity_and_swept(tmp_path):
    data = tmp_path / "split.parquet"
    data.write_bytes(b"one")
    out = tmp_path / "job"
    with checkpointed(out, {"lr": 1}, {"split": data, "views": None}) as first:
        first.write_bytes(b"weights")
    assert not first.exists()  # the block ended without an error: nothing to resume
    with pytest.raises(RuntimeError), checkpointed(out, {"lr": 1}, {"split": data}) as kept:
        kept.write_bytes(b"weights")
        raise RuntimeError("killed")
    assert kept == first and kept.exists()  # same identity, same name: a rerun resumes from it
    partial = out / f".{kept.name}.1a2b3c4d.pt"  # an interrupted atomic save
    partial.write_bytes(b"half")
    with checkpointed(out, {"lr": 2}, {"split": data}) as other_params:
        assert other_params != kept and not kept.exists() and not partial.exists()
        other_params.write_bytes(b"w")
        data.write_bytes(b"two")  # same params, other input content: another job
        with checkpointed(out, {"lr": 2}, {"split": data}) as other_data:
            assert other_data != other_params and not other_params.exists()
    assert sorted(p.name for p in out.iterdir()) == []


def test_train_loop_without_a_checkpoint_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.ones(4, 2)
    history = train_loop(model, opt, lambda b, g: (model(b).pow(2).mean(), {}), lambda e, g: [data], epochs=2, seed=0,
                         device=torch.device("cpu"), amp="none", checkpoint_path=None, checkpoint_every=1)
    assert len(history) == 2 and history["loss"].iloc[1] < history["loss"].iloc[0]
    assert list(tmp_path.iterdir()) == []
