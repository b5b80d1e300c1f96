"""defectbench's own DDPM UNet and noise schedule against diffusers 0.42.1's ``UNet2DModel`` and
``DDPMScheduler``: same state dict keys and shapes, same init for a seed, same outputs, and files
each side saves load on the other. diffusers is imported by these tests only, never by a job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from defectbench.diffusion import ddpm
from defectbench.models.unet import UNet2D
from defectbench.runtime import DefectbenchError

# (image size, widths, layers per block, attention levels, resnet up/down): every block kind,
# both resampling kinds, attention at no / some / every level, a width that is not a multiple
# of the head size (inner attention width 8 of 12 channels).
SHAPES = [
    (16, [8, 16], 1, 1, False),
    (16, [8, 16], 2, 0, False),
    (32, [8, 12, 16], 1, 2, True),
    (16, [16, 16], 2, 2, True),
]
# batches where diffusers' layout choices show in the last bit: a channels-last strided shortcut
# input in training (batch 16 at 32 px), contiguous upsampling from batch 64 on
BATCHES = [(SHAPES[0], 3), (SHAPES[1], 3), (SHAPES[2], 3), (SHAPES[3], 3),
           ((32, [16, 32], 1, 1, False), 16), ((8, [8, 16], 1, 2, True), 64)]


def diffusers_twin(size, widths, layers, attention_levels, updown):
    """diffusers' UNet2DModel with the arguments :func:`ddpm.build_unet` gives its own UNet."""
    from diffusers import UNet2DModel

    levels = len(widths)
    down = ["DownBlock2D"] * (levels - attention_levels) + ["AttnDownBlock2D"] * attention_levels
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=tuple(widths),
                       layers_per_block=layers, down_block_types=tuple(down),
                       up_block_types=tuple(t.replace("Down", "Up") for t in reversed(down)),
                       norm_num_groups=ddpm._norm_groups(widths), attention_head_dim=min(8, widths[-1]),
                       downsample_type="resnet" if updown else "conv", upsample_type="resnet" if updown else "conv")


@pytest.mark.parametrize("shape,batch", BATCHES)
def test_unet_equals_diffusers_for_the_same_seed(shape, batch, one_torch_thread):
    size, widths, layers, attention_levels, updown = shape
    torch.manual_seed(3)
    ours = ddpm.build_unet(size, widths, layers, attention_levels, updown)
    after_ours = torch.rand(1)
    torch.manual_seed(3)
    theirs = diffusers_twin(*shape)
    assert torch.equal(torch.rand(1), after_ours)  # the same number of random draws
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    x = torch.randn(batch, 3, size, size)
    t = torch.tensor([0, 417, 999] * (batch // 3) + [250] * (batch % 3))
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        torch.manual_seed(5)
        out = ours(x, t)
        after = torch.rand(1)
        torch.manual_seed(5)
        ref = theirs(x, t).sample
        assert torch.equal(torch.rand(1), after)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # a scalar timestep is broadcast over the batch, as in diffusers
    with torch.no_grad():
        torch.testing.assert_close(ours(x, 250), theirs(x, 250).sample, rtol=0, atol=0)
    # gradients agree too (the training step)
    ours.zero_grad()
    theirs.zero_grad()
    ours(x, t).square().mean().backward()
    theirs(x, t).sample.square().mean().backward()
    for (k, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=k)


def test_unet_files_load_both_ways(tmp_path, one_torch_thread):
    from diffusers import DDPMScheduler, UNet2DModel

    shape = SHAPES[2]
    torch.manual_seed(0)
    ours = ddpm.build_unet(*shape[:3], shape[3], shape[4]).eval()
    sched = ddpm.make_scheduler({"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    ddpm.save_diffusion(tmp_path / "ours", ours, sched)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    with torch.no_grad():
        theirs = UNet2DModel.from_pretrained(tmp_path / "ours").eval()
        torch.testing.assert_close(theirs(x, t).sample, ours(x, t), rtol=0, atol=0)
        their_sched = DDPMScheduler.from_pretrained(tmp_path / "ours")
        assert torch.equal(their_sched.betas, sched.betas)
        assert their_sched.config.num_train_timesteps == 1000 and their_sched.config.clip_sample is False
        theirs.save_pretrained(tmp_path / "theirs")
        their_sched.save_pretrained(tmp_path / "theirs")
        loaded, loaded_sched = ddpm.load_diffusion(tmp_path / "theirs")
        torch.testing.assert_close(loaded(x, t), ours(x, t), rtol=0, atol=0)
    assert loaded.sample_size == 32 and not loaded.training
    assert torch.equal(loaded_sched.betas, sched.betas) and loaded_sched.num_train_timesteps == 1000
    # the schedule's alpha-bar table is diffusers' alphas_cumprod behind the prepended 1
    torch.testing.assert_close(ddpm.scheduler_table(sched)[1:].float(), their_sched.alphas_cumprod.float())


def test_unet_from_pretrained_refuses_what_it_does_not_implement(tmp_path):
    unet = ddpm.build_unet(16, [8, 16], 1)
    unet.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value, message in [("center_input_sample", True, "center_input_sample=True is not supported"),
                                ("_class_name", "UNet2DConditionModel", "expected 'UNet2DModel'"),
                                ("attention_head_dim", None, "attention_head_dim=null"),
                                ("up_block_types", ["UpBlock2D", "UpBlock2D"], "do not mirror")]:
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(DefectbenchError, match=message):
            UNet2D.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "block_out_channels": [8, 32]}))
    with pytest.raises(DefectbenchError, match="diffusion_pytorch_model.safetensors: does not match"):
        UNet2D.from_pretrained(tmp_path)
    sched = ddpm.make_scheduler({"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    sched.save_pretrained(tmp_path)
    sched_config = json.loads((tmp_path / "scheduler_config.json").read_text())
    for key, value, message in [("beta_schedule", "scaled_linear", "beta_schedule='scaled_linear' is not supported"),
                                ("beta_end", None, "must be numbers")]:
        (tmp_path / "scheduler_config.json").write_text(json.dumps({**sched_config, key: value}))
        with pytest.raises(DefectbenchError, match=message):
            ddpm.NoiseSchedule.from_pretrained(tmp_path)
    # loading leaves the caller's random numbers where they were
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.manual_seed(1)
    expected = torch.rand(1)
    torch.manual_seed(1)
    UNet2D.from_pretrained(tmp_path)
    assert torch.equal(torch.rand(1), expected)


def test_diffusion_modules_do_not_import_diffusers():
    code = ("import sys, defectbench.diffusion.ddpm, defectbench.diffusion.views, defectbench.diffusion.ddad;"
            "print(sorted(m for m in ('diffusers', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
