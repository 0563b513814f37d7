"""ACE stage 1's gates: how much of the low-rank edit each layer (or head) applies.

The gate ``g`` of a layer is chosen in closed form from attention outputs: run a few
denoising steps on concept prompts, record the queries, and take the ``g`` that best maps the
edited attention output on concept prompts to the original output on anchor prompts while
keeping the preserve prompts' outputs — linearised by the secant between g = 0 and g = 1 (the
paper's ``g* ∝ Σ Qᵀ ΔAttn``, made dimensionally consistent), clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ace_erasure.methods.ace.config import AceConfig
from ace_erasure.models.plumbing import base_linear, cross_attention_layers


@torch.no_grad()
def record_queries(
    pipe, prompts: Sequence[str], config: AceConfig, seed: int
) -> dict[str, torch.Tensor]:
    """Attention queries of every cross-attention layer on a short denoising run.

    Returns layer name -> (n_prompts, n_rows, inner_dim), rows subsampled per prompt.
    """
    layers = cross_attention_layers(pipe.unet)
    records: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    generator = torch.Generator().manual_seed(seed)
    handles = []
    for name, module in layers:

        def hook(_m, _inputs, output, name=name) -> None:
            rows = output.shape[1]
            keep = torch.randperm(rows, generator=generator)[: config.gate_queries]
            records[name].append(output[:, keep].detach().float().cpu())

        handles.append(module.to_q.register_forward_hook(hook))
    side = config.gate_resolution or (pipe.unet.config.sample_size * pipe.vae_scale_factor)
    # A few DDIM steps work with any pipeline; its own scheduler may not (PNDM needs more steps).
    from diffusers import DDIMScheduler

    scheduler = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(scheduler.config)
    try:
        pipe(
            list(prompts),
            num_inference_steps=config.gate_steps,
            guidance_scale=1.0,
            height=side,
            width=side,
            output_type="latent",
            generator=torch.Generator(device="cpu").manual_seed(seed),
        )
    finally:
        pipe.scheduler = scheduler
        for handle in handles:
            handle.remove()
    return {name: torch.cat(chunks, dim=1) for name, chunks in records.items()}


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    """Multi-head attention outputs (batch, rows, heads, head_dim) before the output projection."""
    b, n, inner = query.shape
    dh = inner // heads
    q = query.view(b, n, heads, dh).transpose(1, 2)
    k = key.view(b, key.shape[1], heads, dh).transpose(1, 2)
    v = value.view(b, value.shape[1], heads, dh).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)
    return (weights @ v).transpose(1, 2)


def layer_gates(
    module,
    queries: torch.Tensor,
    concept_embeds: torch.Tensor,
    anchor_embeds: torch.Tensor,
    preserve_embeds: torch.Tensor,
    delta_k: torch.Tensor,
    delta_v: torch.Tensor,
    config: AceConfig,
) -> torch.Tensor:
    """Closed-form gate(s) for one layer: argmin_g ‖Attn_g(concept) − Attn_0(anchor)‖² +
    μ ‖Attn_g(preserve) − Attn_0(preserve)‖², linearised by the secant between g = 0 and 1,
    clipped to [0, 1]."""
    heads = module.heads
    w_k, w_v = base_linear(module.to_k).weight.float(), base_linear(module.to_v).weight.float()
    dk, dv = delta_k.float(), delta_v.float()

    def attend(embeds: torch.Tensor, gate: float) -> torch.Tensor:
        key = embeds @ (w_k + gate * dk).T
        value = embeds @ (w_v + gate * dv).T
        q = (
            queries[: len(embeds)]
            if len(queries) >= len(embeds)
            else queries.repeat(math.ceil(len(embeds) / len(queries)), 1, 1)[: len(embeds)]
        )
        return attention(q, key, value, heads)

    base = attend(concept_embeds, 0.0)
    residual = attend(anchor_embeds, 0.0) - base
    direction = attend(concept_embeds, 1.0) - base
    keep = attend(preserve_embeds, 1.0) - attend(preserve_embeds, 0.0)
    sum_dims = (0, 1, 3)
    numerator = (residual * direction).sum(sum_dims)
    denominator = direction.square().sum(
        sum_dims
    ) + config.gate_preserve_weight * keep.square().sum(sum_dims) * (
        len(concept_embeds) / max(1, len(preserve_embeds))
    )
    if config.gate == "layer":
        numerator, denominator = numerator.sum(0, keepdim=True), denominator.sum(0, keepdim=True)
    return (numerator / denominator.clamp(min=1e-12)).clamp(0.0, 1.0)
