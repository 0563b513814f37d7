"""Text conditioning and noise prediction, the same way for every pipeline family.

- :func:`encode_prompts`: the token embeddings the UNet's cross-attention sees, through the
  pipeline's own ``encode_prompt`` (so clip-skip, SDXL's two encoders etc. are exactly as at
  sampling time); no gradients.
- :class:`PromptEncoder`: :func:`encode_prompts` for one erasure — remembers prompts that recur
  (anchors, concept prompts reused by the gates) and can run the encoder(s) in bfloat16.
- :class:`Conditioning` / :func:`encode_conditioning`: what the UNet needs (SDXL: the pooled
  embedding too), with gradients, so attacks and training can optimise through the encoders.
- :func:`predict_noise`: one UNet call for any family (SDXL's added conditions filled in).
- :func:`noise_target`: what a UNet trained with the pipeline's scheduler predicts (ε or v);
- :func:`forward_process`: the training schedule's noising coefficients (not the sampling
  solver's).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ace_erasure.models.embeddings import perturbed_token_embeddings
from ace_erasure.models.plumbing import ENCODER_ATTRIBUTES, model_family


@dataclass
class Conditioning:
    """Text conditioning of a batch: ``embeds`` (batch, tokens, dim) for cross-attention and,
    for SDXL, ``pooled`` (batch, dim) for the time embedding."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.embeds)

    def detach(self) -> Conditioning:
        return Conditioning(
            self.embeds.detach(), None if self.pooled is None else self.pooled.detach()
        )

    def repeat(self, n: int) -> Conditioning:
        """Each row ``n`` times in a row (row i becomes rows i*n .. i*n+n-1)."""
        return Conditioning(
            self.embeds.repeat_interleave(n, 0),
            None if self.pooled is None else self.pooled.repeat_interleave(n, 0),
        )

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        pooled = [c.pooled for c in items if c.pooled is not None]
        return Conditioning(
            torch.cat([c.embeds for c in items]),
            torch.cat(pooled) if len(pooled) == len(items) else None,
        )


def encode_conditioning(pipe, prompts: Sequence[str]) -> Conditioning:
    """The conditioning of ``prompts`` through the pipeline's ``encode_prompt``, with gradients
    (wrap in ``torch.no_grad()`` when none are needed)."""
    device = pipe.unet.device
    if model_family(pipe) == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=list(prompts),
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return Conditioning(embeds, pooled)
    return Conditioning(pipe.encode_prompt(list(prompts), device, 1, False)[0])


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(n_prompts, tokens, context_dim) embeddings that the UNet's cross-attention receives."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        chunks.append(encode_conditioning(pipe, prompts[start : start + batch_size]).embeds.float())
    return torch.cat(chunks)


def predict_noise(pipe, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning):
    """The UNet's prediction (ε or v, as the model was trained) for ``latents`` at
    ``timesteps`` under ``cond``; SDXL's size conditions are those of the latents' image."""
    unet = pipe.unet
    kwargs = {}
    if cond.pooled is not None:
        height = latents.shape[-2] * pipe.vae_scale_factor
        width = latents.shape[-1] * pipe.vae_scale_factor
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=cond.pooled.dtype)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": cond.pooled,
            "time_ids": time_ids.repeat(len(latents), 1).to(latents.device),
        }
    return unet(
        latents, timesteps, encoder_hidden_states=cond.embeds.to(latents.dtype), **kwargs
    ).sample


def forward_process(
    scheduler, latents: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1 − ᾱ_t)) of the training schedule at ``timesteps``, shaped to broadcast
    over ``latents``.

    Computed from ``alphas_cumprod`` rather than the scheduler's ``add_noise``: multistep
    solvers (DPM-Solver, ToyWorld's and SD's usual choice) look a timestep up in their
    *inference* schedule, so their ``add_noise`` gives the noise level of step 999 − t on a
    fresh scheduler and of the last, nearly clean step for any t outside the schedule a
    pipeline call left behind."""
    alphas = scheduler.alphas_cumprod.to(latents.device, torch.float32)[timesteps.long()]
    shape = (-1, *[1] * (latents.ndim - 1))
    return (alphas**0.5).view(shape), ((1 - alphas) ** 0.5).view(shape)


def noise_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict for ``latents`` noised with ``noise``: ε, or v for
    v-prediction models (SD 2.x 768 px)."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "v_prediction":  # v = √ᾱ_t ε − √(1 − ᾱ_t) x₀ (:func:`forward_process`)
        signal, sigma = forward_process(scheduler, latents, timesteps)
        return (signal * noise - sigma * latents).to(latents.dtype)
    if kind != "epsilon":
        raise ValueError(f"unsupported prediction type {kind!r}")
    return noise


class PromptEncoder:
    """:func:`encode_prompts` for the duration of one erasure.

    - Prompts encoded without perturbation are remembered, so that prompts shared by concepts
      (the anchor "a photo of a" of 100 objects) or stages (the gates reuse concept prompts) run
      through the text encoder once.
    - ``dtype``: run copies of the text encoder(s) in this dtype (e.g. ``torch.bfloat16``: ~3.7x
      faster for a CLIP-L-sized encoder on an AVX-512-BF16 CPU, ~0.7 % relative deviation of
      the embeddings). The pipeline's own encoders are swapped back after every call, so
      sampling with the pipeline is never affected. None: the pipeline's encoders as they are.
    """

    def __init__(self, pipe, dtype: torch.dtype | None = None) -> None:
        self.pipe = pipe
        self.cache: dict[str, torch.Tensor] = {}
        self.passes = 0  # prompts that went through the text encoder(s)
        self._copies: dict[str, nn.Module] = {}
        for attribute in ENCODER_ATTRIBUTES:
            encoder = getattr(pipe, attribute, None)
            if dtype is not None and encoder is not None and encoder.dtype != dtype:
                self._copies[attribute] = copy.deepcopy(encoder).to(dtype)

    @contextlib.contextmanager
    def _encoders(self) -> Iterator[None]:
        originals = {a: getattr(self.pipe, a) for a in self._copies}
        try:
            for attribute, encoder in self._copies.items():
                setattr(self.pipe, attribute, encoder)
            yield
        finally:
            for attribute, encoder in originals.items():
                setattr(self.pipe, attribute, encoder)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n_prompts, tokens, context_dim) embeddings; each distinct prompt encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            with self._encoders():
                embeds = encode_prompts(self.pipe, missing)
            self.passes += len(missing)
            self.cache.update(zip(missing, embeds))
        return torch.stack([self.cache[p] for p in prompts])

    def perturbed(
        self,
        prompts: Sequence[str],
        positions: Sequence[Sequence[int]],
        radius: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Embeddings of ``prompts`` with their input token embeddings at ``positions``
        perturbed (see :func:`perturbed_token_embeddings`); never remembered."""
        with self._encoders(), perturbed_token_embeddings(self.pipe, positions, radius, generator):
            embeds = encode_prompts(self.pipe, prompts, batch_size=len(prompts))
        self.passes += len(prompts)
        return embeds
