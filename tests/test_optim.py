"""defectbench.optim: bit-identical to torch's fused Adam/AdamW, torch's state_dict layout, no torch._dynamo."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from defectbench.optim import Adam, CosineSchedule


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).to(memory_format=torch.channels_last)
    return net, copy.deepcopy(net)


def _train(pairs, steps: int, x: torch.Tensor) -> None:
    for _ in range(steps):
        for net, opt, schedule in pairs:
            opt.zero_grad(set_to_none=True)
            net(x).pow(2).mean().backward()
            opt.step()
            if schedule is not None:
                schedule.step()


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_and_cosine_take_torchs_fused_steps_bit_for_bit(decoupled):
    ours_net, torch_net = _nets()
    start = [p.detach().clone() for p in ours_net.parameters()]
    ours = Adam(ours_net.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=decoupled)
    reference = (torch.optim.AdamW if decoupled else torch.optim.Adam)(torch_net.parameters(), lr=0.01,
                                                                       weight_decay=0.1, fused=True)
    schedules = CosineSchedule(ours, total_steps=7), torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=7)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    _train([(ours_net, ours, schedules[0]), (torch_net, reference, schedules[1])], 6, x)
    for p, q, p0 in zip(ours_net.parameters(), torch_net.parameters(), start):
        assert not torch.equal(p, p0)
        assert torch.equal(p, q)
    assert ours.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12)
    # Adam and AdamW are different updates: the flag reaches the kernel
    other_net, _ = _nets()
    _train([(other_net, Adam(other_net.parameters(), lr=0.01, weight_decay=0.1,
                             decoupled_weight_decay=not decoupled), None)], 6, x)
    assert not all(torch.equal(p, q) for p, q in zip(other_net.parameters(), ours_net.parameters()))


def test_state_dicts_load_both_ways_and_resume_exactly():
    """A checkpoint of torch's optimizer loads into ours and vice versa; the resumed run continues exactly."""
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    ours_net, torch_net = _nets()
    ours = Adam(ours_net.parameters(), lr=0.01, decoupled_weight_decay=True, weight_decay=0.05)
    reference = torch.optim.AdamW(torch_net.parameters(), lr=0.01, weight_decay=0.05, fused=True)
    _train([(ours_net, ours, None), (torch_net, reference, None)], 3, x)
    swapped_ours = Adam(torch_net.parameters(), lr=1.0, decoupled_weight_decay=True)
    swapped_ours.load_state_dict(reference.state_dict())
    swapped_torch = torch.optim.AdamW(ours_net.parameters(), lr=1.0, fused=True)
    swapped_torch.load_state_dict(ours.state_dict())
    assert swapped_ours.param_groups[0]["lr"] == 0.01 and swapped_ours.param_groups[0]["weight_decay"] == 0.05
    _train([(torch_net, swapped_ours, None), (ours_net, swapped_torch, None)], 3, x)
    for p, q in zip(ours_net.parameters(), torch_net.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="parameters per group"):
        Adam(list(ours_net.parameters())[:1], lr=0.1).load_state_dict(ours.state_dict())


def test_cosine_schedule_state_round_trips_and_checks_its_length():
    opt = Adam(nn.Linear(2, 1).parameters(), lr=1.0)
    schedule = CosineSchedule(opt, total_steps=4)
    lrs = []
    for _ in range(4):
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.853553390593, 0.5, 0.146446609407, 0.0], abs=1e-12)  # (1 + cos(pi t / 4)) / 2
    resumed = CosineSchedule(Adam(nn.Linear(2, 1).parameters(), lr=1.0), total_steps=4)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.last_epoch == 4
    with pytest.raises(ValueError, match="for 4 steps"):
        CosineSchedule(opt, total_steps=5).load_state_dict(schedule.state_dict())


def test_a_training_step_leaves_torch_dynamo_unimported():
    """The reason the class exists: torch.optim imports torch._dynamo (1.1-2.5 s) to build or step an optimizer."""
    code = ("import json, sys, torch\n"
            "from defectbench.optim import Adam, CosineSchedule\n"
            "net = torch.nn.Linear(3, 2)\n"
            "opt = Adam(net.parameters(), lr=0.1, weight_decay=0.01, decoupled_weight_decay=True)\n"
            "schedule = CosineSchedule(opt, 3)\n"
            "net(torch.ones(4, 3)).sum().backward(); opt.step(); schedule.step(); opt.zero_grad()\n"
            "opt.load_state_dict(opt.state_dict())\n"
            "ours = 'torch._dynamo' in sys.modules\n"
            "torch.optim.Adam(net.parameters(), lr=0.1)\n"
            "print(json.dumps([ours, 'torch._dynamo' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, True]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([], lr=0.1)
    with pytest.raises(ValueError, match="invalid hyperparameters"):
        Adam(nn.Linear(2, 1).parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="meta"):
        Adam(nn.Linear(2, 1, device="meta").parameters(), lr=0.1)
