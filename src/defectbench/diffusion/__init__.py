"""Diffusion models: DDPM pretraining (:mod:`.ddpm`), DiffCL diffusion views (:mod:`.views`) and
DDAD anomaly detection (:mod:`.ddad`), all on one UNet (diffusers' layout) per dataset and task."""
