"""Noising for the training losses: the training schedule, whatever sampling came before."""

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ace_erasure.models.conditioning import noise_target
from ace_erasure.training.diffusion import add_noise


def test_noising_ignores_the_schedule_the_last_sampling_left():
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000)
    latents = torch.randn(8, 4, 8, 8)
    before, noise, timesteps = add_noise(scheduler, latents, torch.Generator().manual_seed(0))
    scheduler.set_timesteps(20)  # what a pipeline call leaves behind
    after, _, _ = add_noise(scheduler, latents, torch.Generator().manual_seed(0))
    assert torch.equal(before, after)
    # the forward process √ᾱ_t x₀ + √(1 − ᾱ_t) ε at every timestep, not only the 20 sampled
    alphas = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alphas.sqrt() * latents + (1 - alphas).sqrt() * noise
    assert torch.allclose(after, expected, atol=1e-5)


def test_v_targets_agree_between_schedulers_with_and_without_get_velocity():
    config = dict(num_train_timesteps=1000, prediction_type="v_prediction")
    latents, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    timesteps = torch.tensor([0, 250, 600, 999])
    ddim = noise_target(DDIMScheduler(**config), latents, noise, timesteps)
    dpm = DPMSolverMultistepScheduler(**config)
    dpm.set_timesteps(20)
    assert torch.allclose(noise_target(dpm, latents, noise, timesteps), ddim, atol=1e-5)
