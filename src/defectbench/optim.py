"""Adam / AdamW and a per-step cosine schedule, without torch.optim's start-up cost.

``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is built (``add_param_group``) and on
every ``step`` (to mark graph breaks): 1.1-2.5 CPU-s of every training job's start-up, more than
the rest of its set-up (benchmarks/results/startup.md). :class:`Adam` calls the same fused aten
kernels as ``torch.optim.Adam(fused=True)`` / ``torch.optim.AdamW(fused=True)`` (one pass over all
parameters instead of ~10 tensor ops per parameter), so its updates are bit-identical to those
(tests/test_optim.py), and its ``state_dict`` has torch's layout, so a checkpoint written by either
loads into the other. :class:`CosineSchedule` is ``CosineAnnealingLR`` in closed form.

>>> import torch
>>> model = torch.nn.Linear(3, 1)
>>> opt = Adam(model.parameters(), lr=0.1, weight_decay=0.01, decoupled_weight_decay=True)
>>> schedule = CosineSchedule(opt, total_steps=10)
>>> model(torch.ones(2, 3)).sum().backward(); opt.step(); schedule.step()
>>> round(opt.param_groups[0]["lr"], 6)
0.097553
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

import torch

# Device types with torch's fused Adam kernels (torch.utils._foreach_utils lists the same).
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")
_STATE_KEYS = ("exp_avg", "exp_avg_sq")


class Adam:
    """Adam (``decoupled_weight_decay=False``: L2 added to the gradient) or AdamW (decoupled decay).

    One parameter group; no amsgrad, maximize or closures (nothing in the pipeline uses them).
    Works with ``torch.amp.GradScaler`` (which unscales through ``param_groups``).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False):
        params = list(params)
        if not params:
            raise ValueError("Adam: got an empty parameter list")
        for p in params:
            if p.device.type not in FUSED_DEVICES:
                raise ValueError(f"Adam: a parameter is on {p.device}; the fused kernels exist for {', '.join(FUSED_DEVICES)}")
        if not (lr >= 0.0 and eps >= 0.0 and weight_decay >= 0.0 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"Adam: invalid hyperparameters lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        self.param_groups: list[dict[str, Any]] = [{
            "params": params, "lr": float(lr), "betas": (float(betas[0]), float(betas[1])), "eps": float(eps),
            "weight_decay": float(weight_decay), "amsgrad": False, "maximize": False, "fused": True,
            "decoupled_weight_decay": bool(decoupled_weight_decay),
        }]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter that has a gradient (grouped by device and dtype)."""
        group = self.param_groups[0]
        tensors: dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]] = defaultdict(lambda: [[], [], [], [], []])
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients")
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    **{key: torch.zeros_like(p, memory_format=torch.preserve_format) for key in _STATE_KEYS},
                }
            for bucket, t in zip(tensors[(p.device, p.dtype)], (p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                                                               state["step"])):
                bucket.append(t)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = group["betas"]
        for params, grads, exp_avgs, exp_avg_sqs, steps in tensors.values():
            torch._foreach_add_(steps, 1)
            kernel(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                   beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: per-parameter state keyed by the parameter's index, groups with indices."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        return {
            "state": {index[id(p)]: dict(s) for p, s in self.state.items()},
            "param_groups": [{**{k: v for k, v in group.items() if k != "params"}, "params": list(range(len(index)))}],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``torch.optim.Adam``/``AdamW`` over the same parameters."""
        groups = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError(f"optimizer state has {[len(g['params']) for g in groups]} parameters per group; "
                             f"this optimizer has one group of {len(params)}")
        saved = groups[0]
        group = self.param_groups[0]
        for key in ("lr", "eps", "weight_decay"):
            group[key] = float(saved[key])
        group["betas"] = tuple(float(b) for b in saved["betas"])
        by_index = dict(zip(saved["params"], params))
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[i]
            step = s["step"]
            self.state[p] = {
                "step": (step if torch.is_tensor(step) else torch.tensor(float(step))).to(device=p.device, dtype=torch.float32),
                **{key: s[key].to(device=p.device, dtype=p.dtype) for key in _STATE_KEYS},
            }


class CosineSchedule:
    """``lr(t) = eta_min + (lr0 - eta_min) * (1 + cos(pi * t / total_steps)) / 2`` after step ``t``.

    ``torch.optim.lr_scheduler.CosineAnnealingLR`` computes the same curve recursively (equal to
    ~1e-12, tests/test_optim.py); this form needs no torch.optim.Optimizer and cannot drift.
    """

    def __init__(self, optimizer: Adam, total_steps: int, eta_min: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"CosineSchedule: total_steps must be >= 1, got {total_steps}")
        self.optimizer, self.total_steps, self.eta_min = optimizer, int(total_steps), float(eta_min)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0  # steps taken (torch's name, so the state dicts match)

    def step(self) -> None:
        self.last_epoch += 1
        factor = (1.0 + math.cos(math.pi * self.last_epoch / self.total_steps)) / 2.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.eta_min + (base - self.eta_min) * factor

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs), "T_max": self.total_steps,
                "eta_min": self.eta_min}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if int(state_dict["T_max"]) != self.total_steps:
            raise ValueError(f"schedule state is for {state_dict['T_max']} steps, this run has {self.total_steps}")
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = [float(b) for b in state_dict["base_lrs"]]
