"""The DDPM UNet in diffusers' ``UNet2DModel`` layout, without diffusers.

Importing diffusers imports torch._dynamo, torchvision and scipy.stats (4 s of every diffusion
job's start-up on 2 cores) for a network of convolutions, GroupNorm and one attention kind. So it
is written here with diffusers' module names (a ``UNet2DModel`` state dict loads unchanged, and
the other way round), its construction order (the same seed gives the same random init bit for
bit) and its forward arithmetic (the same outputs); tests/test_unet.py checks all three against
diffusers 0.42.1, as well as saving and loading across the two.

Only what defectbench builds is supported: positional (sinusoidal, cos first) time embedding,
``DownBlock2D``/``AttnDownBlock2D`` and their ``Up`` mirrors, a ``UNetMidBlock2D`` with
attention, SiLU, the "default" time-embedding norm, no dropout, no class conditioning.
:meth:`UNet2D.from_pretrained` refuses any other diffusers config with a message naming the
key. As in diffusers, ``downsample_type``/``upsample_type`` "resnet" (BigGAN-style resampling
ResNet blocks) applies to the attention blocks only; the plain blocks always resample with
convolutions.

>>> unet = UNet2D(16, [8, 16], 1, ["DownBlock2D", "AttnDownBlock2D"], norm_num_groups=8, attention_head_dim=8)
>>> unet(torch.zeros(2, 3, 16, 16), torch.tensor([0, 999])).shape
torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defectbench.runtime import DefectbenchError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_LAYOUT = "0.42.1"  # the diffusers version whose layout this follows (written into config.json)

# Every other key of a diffusers UNet2DModel config, with the only value supported here.
_FIXED_CONFIG: dict[str, Any] = {
    "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
    "flip_sin_to_cos": True, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1, "downsample_padding": 1,
    "dropout": 0.0, "act_fn": "silu", "attn_norm_num_groups": None, "resnet_time_scale_shift": "default",
    "add_attention": True, "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
}
_DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D")
_RESAMPLE_TYPES = ("conv", "resnet")


def _nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsampling, first making ``x`` contiguous where diffusers' ``Upsample2D`` does:
    that decides the output's memory format and so the kernels of the next convolution."""
    if x.shape[0] >= 64 or x.numel() * 2 > 2**31:
        x = x.contiguous()
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), cos half first (diffusers' ``flip_sin_to_cos=True``, shift 0)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half
    angles = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, 1, 0, 0)) if dim % 2 else emb


class _Resnet(nn.Module):
    """diffusers' ``ResnetBlock2D`` (pre-norm, SiLU, time embedding added after conv1), optionally
    resampling both paths first (``resample`` "down": 2x2 average pool, "up": nearest 2x)."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, resample: str | None = None):
        super().__init__()
        self.resample = resample
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def _resampled(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return _nearest_2x(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self._resampled(F.silu(self.norm1(x)))
        x = self._resampled(x)
        h = self.conv1(h) + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            # diffusers makes it contiguous in training: after an attention block x is channels-last
            # strided, and the layout picks the convolution kernel (results differ in the last bit)
            x = self.conv_shortcut(x.contiguous() if self.training else x)
        return x + h


class _Attention(nn.Module):
    """diffusers' spatial self-attention block (``Attention`` with a GroupNorm and a residual)."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float):
        super().__init__()
        self.heads = channels // head_dim
        inner = self.heads * head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = x.view(b, c, height * width).transpose(1, 2)
        h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)
        q, k, v = (proj(h).view(b, -1, self.heads, proj.out_features // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3]).to(q.dtype)
        out = self.to_out[0](out)
        return out.transpose(-1, -2).reshape(b, c, height, width) + x


class _Resample(nn.Module):
    """Stride-2 3x3 convolution ("down") or nearest 2x + 3x3 convolution ("up"), as ``.conv``."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.conv(_nearest_2x(x) if self.up else x)


def _resampler(kind: str | None, channels: int, temb: int, groups: int, eps: float, up: bool) -> nn.ModuleList | None:
    if kind is None:
        return None
    if kind == "resnet":
        return nn.ModuleList([_Resnet(channels, channels, temb, groups, eps, resample="up" if up else "down")])
    return nn.ModuleList([_Resample(channels, up)])


class _Level(nn.Module):
    """One resolution level, down (``DownBlock2D``/``AttnDownBlock2D``) or up (their mirrors).

    ``in_channels[i]`` is resnet i's input width (an up level's already includes the skip it
    concatenates). Modules are built resnet, attention, resnet, attention, ..., resampler, as in
    diffusers, so a seed draws the same initial weights.
    """

    def __init__(self, in_channels: list[int], cout: int, temb: int, groups: int, eps: float,
                 head_dim: int | None, resample: str | None, up: bool):
        super().__init__()
        resnets, attentions = [], []
        for cin in in_channels:
            resnets.append(_Resnet(cin, cout, temb, groups, eps))
            if head_dim is not None:
                attentions.append(_Attention(cout, head_dim, groups, eps))
        self.attentions = nn.ModuleList(attentions) if head_dim is not None else None
        self.resnets = nn.ModuleList(resnets)
        setattr(self, "upsamplers" if up else "downsamplers", _resampler(resample, cout, temb, groups, eps, up))

    def _layers(self):
        return zip(self.resnets, self.attentions if self.attentions is not None else [None] * len(self.resnets))

    def down(self, h: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = []
        for resnet, attn in self._layers():
            h = resnet(h, temb)
            if attn is not None:
                h = attn(h)
            outs.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h, temb)
            outs.append(h)
        return h, outs

    def upward(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        for resnet, attn in self._layers():
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
            if attn is not None:
                h = attn(h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, temb)
        return h


class _Mid(nn.Module):
    """diffusers' ``UNetMidBlock2D`` with one attention layer: resnet, attention, resnet."""

    def __init__(self, channels: int, temb: int, groups: int, eps: float, head_dim: int):
        super().__init__()
        first = _Resnet(channels, channels, temb, groups, eps)
        attn = _Attention(channels, head_dim, groups, eps)
        self.attentions = nn.ModuleList([attn])
        self.resnets = nn.ModuleList([first, _Resnet(channels, channels, temb, groups, eps)])

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](h, temb)), temb)


class _TimeEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet2D(nn.Module):
    """The epsilon-prediction UNet: ``unet(x, t)`` -> a tensor shaped like ``x``.

    Arguments are diffusers ``UNet2DModel`` config keys (``down_block_types`` lists one entry per
    level, finest first; the up blocks mirror it).
    """

    def __init__(self, sample_size: int, block_out_channels: list[int] | tuple[int, ...], layers_per_block: int,
                 down_block_types: list[str] | tuple[str, ...], *, in_channels: int = 3, out_channels: int = 3,
                 norm_num_groups: int = 32, attention_head_dim: int = 8, norm_eps: float = 1e-5,
                 downsample_type: str = "conv", upsample_type: str = "conv"):
        super().__init__()
        widths = [int(c) for c in block_out_channels]
        down_types = list(down_block_types)
        if len(down_types) != len(widths) or any(t not in _DOWN_TYPES for t in down_types):
            raise DefectbenchError(f"down_block_types: one of {_DOWN_TYPES} per entry of block_out_channels "
                                   f"({len(widths)}), got {down_types}")
        if downsample_type not in _RESAMPLE_TYPES or upsample_type not in _RESAMPLE_TYPES:
            raise DefectbenchError(f"downsample_type/upsample_type: one of {_RESAMPLE_TYPES}, "
                                   f"got {downsample_type!r}/{upsample_type!r}")
        self.sample_size = int(sample_size)
        self.config: dict[str, Any] = {
            "sample_size": self.sample_size, "in_channels": int(in_channels), "out_channels": int(out_channels),
            "down_block_types": down_types, "up_block_types": [t.replace("Down", "Up") for t in reversed(down_types)],
            "block_out_channels": widths, "layers_per_block": int(layers_per_block), "downsample_type": downsample_type,
            "upsample_type": upsample_type, "attention_head_dim": int(attention_head_dim),
            "norm_num_groups": int(norm_num_groups), "norm_eps": float(norm_eps),
        }
        groups, eps, head, n = int(norm_num_groups), float(norm_eps), int(attention_head_dim), int(layers_per_block)
        temb = 4 * widths[0]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.time_embedding = _TimeEmbedding(widths[0], temb)
        last = len(widths) - 1
        self.down_blocks = nn.ModuleList()
        for i, (kind, cout) in enumerate(zip(down_types, widths)):
            attn = kind == "AttnDownBlock2D"
            resample = None if i == last else (downsample_type if attn else "conv")
            cin = widths[max(i - 1, 0)]
            self.down_blocks.append(_Level([cin] + [cout] * (n - 1), cout, temb, groups, eps,
                                           head if attn else None, resample, up=False))
        mid = _Mid(widths[-1], temb, groups, eps, head)  # built before the up blocks, registered after (diffusers' order)
        rev = widths[::-1]
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(reversed(down_types)):
            attn = kind == "AttnDownBlock2D"
            prev, cout, skip_in = rev[max(i - 1, 0)], rev[i], rev[min(i + 1, last)]
            ins = [(prev if j == 0 else cout) + (skip_in if j == n else cout) for j in range(n + 1)]
            resample = None if i == last else (upsample_type if attn else "conv")
            self.up_blocks.append(_Level(ins, cout, temb, groups, eps, head if attn else None, resample, up=True))
        self.mid_block = mid
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=eps)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        temb = self.time_embedding(timestep_embedding(t, self.conv_in.out_channels).to(self.conv_in.weight.dtype))
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            h, outs = level.down(h, temb)
            skips += outs
        h = self.mid_block(h, temb)
        for level in self.up_blocks:
            h = level.upward(h, skips, temb)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    # ------------------------------------------------------------------ diffusers-compatible files
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``diffusion_pytorch_model.safetensors``, as diffusers writes them."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_LAYOUT, **self.config, **_FIXED_CONFIG}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_NAME,
                  metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "UNet2D":
        """Load what :meth:`save_pretrained` (or diffusers' ``UNet2DModel.save_pretrained``) wrote."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise DefectbenchError(f"{config_path}: not a readable UNet config ({exc})") from exc
        if config.get("_class_name") != "UNet2DModel":
            raise DefectbenchError(f"{config_path}: _class_name is {config.get('_class_name')!r}, expected 'UNet2DModel'")
        for key, value in _FIXED_CONFIG.items():
            if config.get(key, value) != value:
                raise DefectbenchError(f"{config_path}: {key}={config[key]!r} is not supported (only {value!r})")
        up = config.get("up_block_types")
        down = config.get("down_block_types") or []
        if up is not None and list(up) != [t.replace("Down", "Up") for t in reversed(down)]:
            raise DefectbenchError(f"{config_path}: up_block_types {up} do not mirror down_block_types {down}")
        try:
            kwargs = {k: config[k] for k in ("sample_size", "block_out_channels", "layers_per_block", "down_block_types")}
        except KeyError as exc:
            raise DefectbenchError(f"{config_path}: key {exc} missing") from exc
        for key in ("in_channels", "out_channels", "norm_num_groups", "attention_head_dim", "norm_eps",
                    "downsample_type", "upsample_type"):
            if key in config:
                if config[key] is None:
                    raise DefectbenchError(f"{config_path}: {key}=null is not supported")
                kwargs[key] = config[key]
        with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the caller's RNG
            model = cls(**kwargs)
        if not weights_path.exists():
            raise DefectbenchError(f"{weights_path}: missing (only safetensors weights are read)")
        try:
            model.load_state_dict(load_file(weights_path, device="cpu"))
        except (RuntimeError, OSError) as exc:
            raise DefectbenchError(f"{weights_path}: does not match {config_path} ({str(exc).splitlines()[0][:200]})") from exc
        return model
