"""Noising for denoising losses: timesteps, noise and noisy latents from one generator."""

from __future__ import annotations

import torch

from ace_erasure.models.conditioning import forward_process


def add_noise(
    scheduler,
    latents: torch.Tensor,
    generator: torch.Generator,
    *,
    t_min: int = 0,
    t_max: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, noise, t): each latent noised at a uniform timestep in [t_min, t_max) of the
    training schedule (:func:`noised`), all randomness drawn from ``generator``."""
    high = t_max or int(scheduler.config.num_train_timesteps)
    timesteps = torch.randint(t_min, high, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    return noised(scheduler, latents, noise, timesteps), noise, timesteps


def noised(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """``latents`` noised with ``noise`` at ``timesteps``: √ᾱ_t x₀ + √(1 − ᾱ_t) ε, whatever
    solver the pipeline samples with and whatever it last sampled (:func:`forward_process`)."""
    signal, sigma = forward_process(scheduler, latents, timesteps.to(latents.device))
    return (signal * latents + sigma * noise.to(latents.device)).to(latents.dtype)
