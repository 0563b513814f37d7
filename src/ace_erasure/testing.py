"""Random-weight pipelines built from configs, for tests and benchmarks (no download).

``tiny_pipeline(family)`` gives a seconds-fast pipeline with the plumbing of SD 1.x ("sd1"),
SD 2.x ("sd2": linear projections, per-block head dims, v-prediction) or SDXL ("sdxl": two text
encoders, the pooled embedding entering through the time embedding). ``sd15_sized_pipeline``
gives a random pipeline with SD 1.5's UNet (~860 M parameters) and a CLIP-L-sized text encoder,
for timing benchmarks. All use the real CLIP BPE vocabulary shipped with the package.
``tiny_image(pipe)`` is the one small image the tests compare.
"""

from __future__ import annotations

import tempfile
from typing import Any, Literal

import torch

Family = Literal["sd1", "sd2", "sdxl"]


def clip_tokenizer(pad_token: str | None = None):
    """The real CLIP tokenizer (77 tokens); SDXL's second tokenizer pads with "!"."""
    from ace_erasure.models.tokenizer import build_tokenizer

    with tempfile.TemporaryDirectory() as directory:
        tokenizer = build_tokenizer(directory)
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    return tokenizer


def _text_encoder(
    tokenizer, hidden: int, layers: int = 2, projection: int | None = None, act: str = "quick_gelu"
):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection or hidden,
        hidden_act=act,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae(levels: int = 2) -> Any:
    """A tiny AutoencoderKL; ``levels`` = 4 gives SD's downsampling factor 8."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8,) + (16,) * (levels - 1),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def tiny_pipeline(family: Family = "sd1", seed: int = 0) -> Any:
    """A random-weight pipeline of the given family, small enough for unit tests on a CPU."""
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    common = dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
    )
    scheduler_kwargs = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    if family == "sd1":
        unet = UNet2DConditionModel(**common, cross_attention_dim=32, attention_head_dim=8)
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(tokenizer, 32),
            tokenizer=tokenizer,
            unet=unet.eval(),
            scheduler=DDIMScheduler(**scheduler_kwargs),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sd2":
        unet = UNet2DConditionModel(
            **common, cross_attention_dim=48, attention_head_dim=(2, 4), use_linear_projection=True
        )
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(tokenizer, 48, act="gelu"),
            tokenizer=tokenizer,
            unet=unet.eval(),
            scheduler=DDIMScheduler(**scheduler_kwargs, prediction_type="v_prediction"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        tokenizer_2 = clip_tokenizer(pad_token="!")
        unet = UNet2DConditionModel(
            **common,
            cross_attention_dim=64,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        )
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(tokenizer, 32),
            text_encoder_2=_text_encoder(tokenizer_2, 32, projection=32),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet.eval(),
            scheduler=DDIMScheduler(**scheduler_kwargs),
            force_zeros_for_empty_prompt=True,
        )
    else:
        raise ValueError(f"unknown family {family!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_image(pipe, prompt: str = "a red circle") -> Any:
    """One 32 x 32 image of a tiny pipeline in 2 steps, seed 0, as a numpy array: what the
    tests compare bit for bit (an erasure applied, saved and reloaded, removed)."""
    import numpy as np

    out = pipe(
        prompt,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        height=32,
        width=32,
    )
    return np.asarray(out.images[0])


def sd15_sized_pipeline(seed: int = 0) -> Any:
    """Random weights in SD 1.5's shapes: UNet ~860 M parameters, CLIP ViT-L/14-sized text encoder
    (the VAE is tiny but downsamples by 8, like SD's, so image sizes mean the same)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768
    )  # diffusers' defaults = SD 1.x UNet
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(levels=4),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            skip_prk_steps=True,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
