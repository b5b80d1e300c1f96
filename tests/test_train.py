"""The one training loop: exact resume, atomic checkpoints, history columns, AMP switch."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from defectbench.runtime import DefectbenchError, load_torch
from defectbench.train import HISTORY_COLUMNS, compiled, epoch_seed, train_loop

CPU = torch.device("cpu")


class Ema:
    """A minimal EMA with the update hook the loop calls after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float = 0.9):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.updates = state["updates"]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    # Dropout uses the *global* RNG and BatchNorm keeps running stats: both must survive a resume.
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    ema = Ema(model)
    data = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))

    def batches(epoch: int, gen: torch.Generator):
        order = torch.randperm(len(data), generator=gen)
        yield from data[order].split(5)

    def step(batch: torch.Tensor, gen: torch.Generator):
        noisy = batch + 0.1 * torch.randn(batch.shape, generator=gen)  # augmentation drawn from gen
        out = model(noisy)
        loss = (out - batch.sum(1, keepdim=True)).pow(2).mean()
        return loss, {"out_std": float(out.detach().std())}

    return model, opt, sched, ema, step, batches


def _run(tmp: Path, epochs: int, name: str = "ckpt.pt", every: int = 1, fresh=None):
    model, opt, sched, ema, step, batches = fresh if fresh is not None else _setup()
    hist = train_loop(model, opt, step, batches, epochs=epochs, seed=7, device=CPU, amp="none",
                      checkpoint_path=tmp / name, checkpoint_every=every, scheduler=sched,
                      extra_state={"ema": ema})
    return model, opt, ema, hist


def test_resume_reaches_bit_identical_weights(tmp_path):
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    model_a, opt_a, ema_a, hist_a = _run(straight_dir, epochs=4)

    # Run 2 epochs, "kill" (throw everything away, also perturb the global RNG), build anew, resume.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    _run(resumed_dir, epochs=2)
    torch.manual_seed(12345)
    torch.rand(100)
    model_b, opt_b, ema_b, hist_b = _run(resumed_dir, epochs=4, fresh=_setup(seed=99))

    for (k, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), k
    for k in ema_a.shadow:
        assert torch.equal(ema_a.shadow[k], ema_b.shadow[k]), k
    assert ema_a.updates == ema_b.updates == 16
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
    pd.testing.assert_frame_equal(hist_a.drop(columns=["images_per_s", "seconds"]),
                                  hist_b.drop(columns=["images_per_s", "seconds"]))
    assert list(hist_b["epoch"]) == [1, 2, 3, 4]


def test_resume_differs_without_checkpoint_rng(tmp_path):
    """Control for the test above: a different seed gives different weights (the check can fail)."""
    model_a, *_ = _run(tmp_path, epochs=2, name="a.pt")
    fresh = _setup()
    model_b, opt, sched, ema, step, batches = fresh
    train_loop(model_b, opt, step, batches, epochs=2, seed=8, device=CPU, amp="none",
               checkpoint_path=tmp_path / "b.pt", checkpoint_every=1, scheduler=sched, extra_state={"ema": ema})
    assert not torch.equal(model_a[0].weight, model_b[0].weight)


def test_history_columns_and_checkpoint_contents(tmp_path):
    _, _, _, hist = _run(tmp_path, epochs=3, every=2)
    assert list(hist.columns) == [*HISTORY_COLUMNS, "out_std"]
    assert list(hist["epoch"]) == [1, 2, 3]
    assert (hist["images_per_s"] > 0).all() and (hist["seconds"] > 0).all()
    assert hist["lr"].is_monotonic_decreasing  # cosine schedule stepped per step
    ckpt = load_torch(tmp_path / "ckpt.pt")  # weights_only=True
    assert ckpt["epoch"] == 3  # the final epoch is always checkpointed
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "extra_state", "rng", "history", "epoch"}
    assert len(ckpt["history"]) == 3


def test_finished_checkpoint_is_not_retrained(tmp_path):
    model, *_ = _run(tmp_path, epochs=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model2, opt, sched, ema, step, batches = _setup()
    calls = []
    hist = train_loop(model2, opt, lambda b, g: calls.append(1) or step(b, g), batches, epochs=2, seed=7,
                      device=CPU, amp="none", checkpoint_path=tmp_path / "ckpt.pt", checkpoint_every=1,
                      scheduler=sched, extra_state={"ema": ema})
    assert calls == [] and len(hist) == 2
    assert all(torch.equal(before[k], v) for k, v in model2.state_dict().items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    _run(tmp_path, epochs=1)
    good = (tmp_path / "ckpt.pt").read_bytes()

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half-written")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, epochs=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "ckpt.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left behind


def test_amp_switch_is_used_and_recorded(tmp_path):
    model, opt, sched, ema, step, batches = _setup()
    seen = []

    def spying_step(batch, gen):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return step(batch, gen)

    hist = train_loop(model, opt, spying_step, batches, epochs=1, seed=0, device=CPU, amp="fp16",
                      checkpoint_path=tmp_path / "c.pt", checkpoint_every=1)
    assert hist["amp"].tolist() == ["bf16"]  # fp16 on CPU falls back to bf16, and says so
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)

    seen.clear()
    hist = train_loop(model, opt, spying_step, batches, epochs=1, seed=0, device=CPU, amp="none",
                      checkpoint_path=tmp_path / "d.pt", checkpoint_every=1)
    assert hist["amp"].tolist() == ["none"] and not any(on for on, _ in seen)


def test_nan_loss_and_empty_epoch_are_errors(tmp_path):
    model, opt, *_ = _setup()
    with pytest.raises(DefectbenchError, match="loss is nan"):
        train_loop(model, opt, lambda b, g: (model(b).sum() * float("nan"), {}), lambda e, g: [torch.ones(4, 3)],
                   epochs=1, seed=0, device=CPU, amp="none", checkpoint_path=tmp_path / "n.pt", checkpoint_every=1)
    with pytest.raises(DefectbenchError, match="no batches"):
        train_loop(model, opt, lambda b, g: (model(b).sum(), {}), lambda e, g: [],
                   epochs=1, seed=0, device=CPU, amp="none", checkpoint_path=tmp_path / "e.pt", checkpoint_every=1)
    assert not (tmp_path / "n.pt").exists() and not (tmp_path / "e.pt").exists()


def test_epoch_seed_is_distinct_and_stable():
    seeds = {epoch_seed(s, e) for s in range(3) for e in range(50)}
    assert len(seeds) == 150
    assert epoch_seed(0, 0) == epoch_seed(0, 0) and 0 <= epoch_seed(5, 3) < 2**63


def test_compiled_is_the_model_when_off_and_a_one_line_error_without_a_compiler():
    import torch._inductor.config as inductor_config

    model = nn.Linear(2, 1)
    assert compiled(model, False, CPU, "contrastive.compile") is model
    with inductor_config.patch({"cpp.cxx": (None, "no-such-cxx")}), pytest.raises(
            DefectbenchError, match=r"^contrastive.compile: true needs a C\+\+ compiler .*'no-such-cxx' not found"):
        compiled(model, True, CPU, "contrastive.compile")


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_model_trains_like_the_eager_one_and_shares_its_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    eager = copy.deepcopy(model)
    forward = compiled(model, True, CPU, "contrastive.compile")
    assert forward is not model
    opts = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (model, eager)]
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        for net, opt in ((forward, opts[0]), (eager, opts[1])):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    # the optimizer updated `model` through the compiled module, whose state_dict keys stay plain
    assert list(model.state_dict()) == list(eager.state_dict())
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(forward(x), eager(x))
