"""ACE's per-token gate (``AceConfig.mode = "token_gate"``) as a diffusers attention processor
(DESIGN.md §2, stage 1.3). Only ACE knows about it: the erasure it makes is an ordinary LoRA
(the gate's linearisation) plus the concept subspace in its method tensors, and
:func:`install` puts the processors in place of the LoRA.

The weight-space LoRA edits every token's key and value: ``K = (W + Δ) e``. The token gate
applies the same edit only where a token looks like the concept: ``K = W e + m(e) Δ e`` with a
soft mask ``m(e) = σ(κ (s(e) − τ))``, where ``s(e) = ‖Uᵀe‖² / ‖e‖²`` is the share of the token
embedding in the concept subspace ``U`` (directions where concept tokens have much more energy
than preserved tokens). Tokens of unrelated prompts then pass through exactly unchanged. The
LoRA is this processor's linearisation (m ≡ 1); the processor needs ace-erasure at inference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - types only
    from ace_erasure.erasure import Erasure

from ace_erasure.errors import AceError, ConfigError
from ace_erasure.models.plumbing import cross_attention_layers


def concept_subspace(
    target_gram: torch.Tensor, preserve_gram: torch.Tensor, rank: int
) -> torch.Tensor:
    """(d, rank) orthonormal basis of the directions with the most target energy per unit of
    preserve energy: top generalised eigenvectors of (Σ_target, Σ_preserve + εI)."""
    dim = target_gram.shape[0]
    regulariser = preserve_gram + 1e-3 * torch.trace(preserve_gram) / dim * torch.eye(
        dim, dtype=torch.float64
    )
    vals, vecs = torch.linalg.eigh(regulariser)
    inv_root = vecs @ torch.diag(vals.clamp(min=1e-12).rsqrt()) @ vecs.T
    _, directions = torch.linalg.eigh(inv_root @ target_gram @ inv_root)
    basis = inv_root @ directions[:, -rank:]
    q, _ = torch.linalg.qr(basis)
    return q


def mask_parameters(
    basis: torch.Tensor,
    target_gram: torch.Tensor,
    preserve_gram: torch.Tensor,
    position: float = 0.5,
    sharpness: float = 4.0,
) -> tuple[float, float]:
    """(τ, κ): the threshold at ``position`` of the way from the mean subspace share of
    preserved tokens to that of target tokens, and κ = ``sharpness`` / gap (with 4, the mask
    goes from 0.12 to 0.88 across the gap)."""
    target_share = float(torch.trace(basis.T @ target_gram @ basis) / torch.trace(target_gram))
    preserve_share = float(
        torch.trace(basis.T @ preserve_gram @ basis) / torch.trace(preserve_gram)
    )
    gap = target_share - preserve_share
    if gap <= 0:
        raise ConfigError(
            "token gate: the concept's tokens are not separable from the preserved ones; "
            "use mode='lora'"
        )
    return preserve_share + position * gap, sharpness / gap


class TokenGateProcessor(nn.Module):
    """Cross-attention with the erasure applied per token, through a soft concept mask.

    Follows diffusers' ``AttnProcessor2_0`` for everything else (masks, norms, residuals).
    """

    def __init__(
        self,
        key_up: torch.Tensor,
        key_down: torch.Tensor,
        value_up: torch.Tensor,
        value_down: torch.Tensor,
        basis: torch.Tensor,
        threshold: float,
        sharpness: float,
    ) -> None:
        super().__init__()
        self.key_up: torch.Tensor
        self.key_down: torch.Tensor
        self.value_up: torch.Tensor
        self.value_down: torch.Tensor
        self.register_buffer("key_up", key_up)
        self.register_buffer("key_down", key_down)
        self.register_buffer("value_up", value_up)
        self.register_buffer("value_down", value_down)
        self.register_buffer("basis", basis.float())
        self.basis: torch.Tensor
        self.threshold, self.sharpness = threshold, sharpness

    def token_mask(self, embeds: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, tokens, 1) mask in [0, 1]."""
        e = embeds.float()
        share = (e @ self.basis).square().sum(-1) / e.square().sum(-1).clamp(min=1e-12)
        return torch.sigmoid(self.sharpness * (share - self.threshold)).unsqueeze(-1)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sequence_length, batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        mask = self.token_mask(context).to(context.dtype)
        key = attn.to_k(context) + mask * (
            (context @ self.key_down.to(context.dtype).T) @ self.key_up.to(context.dtype).T
        )
        value = attn.to_v(context) + mask * (
            (context @ self.value_down.to(context.dtype).T) @ self.value_up.to(context.dtype).T
        )
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0
        )
        hidden_states = (
            hidden_states.transpose(1, 2)
            .reshape(batch_size, -1, attn.heads * head_dim)
            .to(query.dtype)
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


BASIS = "token_gate.basis"  # the method tensor that holds the concept subspace (d, k)


def is_token_gate(erasure: Erasure) -> bool:
    """Whether ``erasure`` was made in token-gate mode."""
    return erasure.method_data.get("mode") == "token_gate"


class InstalledTokenGate:
    """Token-gate processors installed in a pipeline; :meth:`remove` puts the previous
    processors back."""

    def __init__(self, pipe, previous: dict) -> None:
        self.pipe, self.previous = pipe, previous

    def remove(self) -> None:
        if self.previous:
            self.pipe.unet.set_attn_processor(self.previous)
            self.previous = {}

    def __enter__(self) -> InstalledTokenGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install(pipe, erasure: Erasure, scale: float = 1.0, *, force: bool = False):
    """Put a token-gate erasure's processors on every cross-attention layer of ``pipe``;
    returns the handle that removes them."""
    if not is_token_gate(erasure):
        raise AceError("this erasure was not made in token-gate mode")
    erasure.check_compatible(pipe, force=force)
    if any(isinstance(p, TokenGateProcessor) for p in pipe.unet.attn_processors.values()):
        raise AceError("a token-gate erasure is already installed in this pipeline")
    data = erasure.method_data["token_gate"]
    previous = dict(pipe.unet.attn_processors)
    processors = dict(previous)
    for layer, _ in cross_attention_layers(pipe.unet):
        (k_down, k_up), (v_down, v_up) = (
            erasure.edits[f"unet.{layer}.{proj}"].lora_factors() for proj in ("to_k", "to_v")
        )
        processors[f"{layer}.processor"] = TokenGateProcessor(
            k_up * scale,
            k_down,
            v_up * scale,
            v_down,
            erasure.method_tensors[BASIS],
            float(data["threshold"]),
            float(data["sharpness"]),
        ).to(pipe.unet.device)
    pipe.unet.set_attn_processor(processors)
    return InstalledTokenGate(pipe, previous)
