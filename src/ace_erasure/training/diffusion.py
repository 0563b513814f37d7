"""Noising for denoising losses: timesteps, noise and noisy latents from one generator."""

from __future__ import annotations

import torch


def add_noise(
    scheduler,
    latents: torch.Tensor,
    generator: torch.Generator,
    *,
    t_min: int = 0,
    t_max: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, noise, t): each latent noised at a uniform timestep in [t_min, t_max) of the
    scheduler's training schedule, all randomness drawn from ``generator``."""
    high = t_max or int(scheduler.config.num_train_timesteps)
    timesteps = torch.randint(t_min, high, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    noisy = scheduler.add_noise(latents, noise.to(latents.device), timesteps.to(latents.device))
    return noisy, noise, timesteps
