"""Text conditioning, noise prediction and the per-erasure prompt encoder, for every family."""

import pytest
import torch

from ace_erasure.models.conditioning import (
    Conditioning,
    PromptEncoder,
    encode_conditioning,
    encode_prompts,
    noise_target,
    predict_noise,
)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_predict_noise_matches_the_pipeline_unet_call(tiny_pipes, family):
    pipe = tiny_pipes(family)
    with torch.no_grad():
        cond = encode_conditioning(pipe, ["a red circle", "a blue star"])
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([10, 500])
        out = predict_noise(pipe, latents, t, cond)
        halves = [
            Conditioning(
                cond.embeds[i : i + 1], None if cond.pooled is None else cond.pooled[i : i + 1]
            )
            for i in range(2)
        ]
        again = predict_noise(pipe, latents, t, Conditioning.cat(halves))
    assert out.shape == latents.shape and torch.allclose(out, again, atol=1e-6)
    assert torch.equal(cond.repeat(2).embeds[1], cond.embeds[0])


def test_noise_target_follows_the_prediction_type(tiny_pipes):
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(noise_target(tiny_pipes("sd1").scheduler, latents, noise, t), noise)
    v = noise_target(tiny_pipes("sd2").scheduler, latents, noise, t)  # v-prediction
    assert not torch.allclose(v, noise)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_prompt_encoder_remembers_prompts_and_can_run_in_bfloat16(tiny_pipes, family):
    pipe = tiny_pipes(family)
    prompts = ["a red circle", "a photo of a cat", "a red circle"]
    reference = encode_prompts(pipe, prompts)
    encode = PromptEncoder(pipe)
    assert torch.allclose(encode(prompts), reference, atol=1e-6)
    assert encode.passes == 2  # the repeated prompt ran once
    encode(["a photo of a cat", ""])
    assert encode.passes == 3

    originals = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    half = PromptEncoder(pipe, torch.bfloat16)
    low = half(prompts)
    assert low.dtype == torch.float32
    error = (low - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert 0 < float(error.max()) < 0.05  # bfloat16 rounding, nothing worse
    noisy = half.perturbed(prompts[:1], [[3]], 0.3, torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy[0, 3:], low[0, 3:], atol=1e-3)  # the copies get the noise
    # the pipeline's own encoders are back, untouched and still float32
    assert [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)] == originals
    assert pipe.text_encoder.dtype == torch.float32
    assert torch.equal(encode_prompts(pipe, prompts), reference)
