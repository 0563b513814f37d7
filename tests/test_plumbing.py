import pytest
import torch

from ace_erasure.models.plumbing import (
    PromptEncoder,
    TokenSpan,
    aligned_positions,
    cross_attention_layers,
    encode_prompts,
    fingerprint,
    model_family,
    perturbed_token_embeddings,
    token_span,
    tokenizers,
)


@pytest.mark.parametrize("family,dim", [("sd1", 32), ("sd2", 48), ("sdxl", 64)])
def test_cross_attention_layers_and_encoding(tiny_pipes, family, dim):
    pipe = tiny_pipes(family)
    layers = cross_attention_layers(pipe.unet)
    assert layers and all(name.endswith("attn2") for name, _ in layers)
    assert all(m.to_k.in_features == dim for _, m in layers)
    assert model_family(pipe) == ("sdxl" if family == "sdxl" else "sd")
    embeds = encode_prompts(pipe, ["a red circle", "a photo of a cat", ""])
    assert embeds.shape == (3, 77, dim) and embeds.dtype == torch.float32
    # the same prompt gives the same embedding (no randomness in encoding)
    assert torch.equal(encode_prompts(pipe, ["a red circle"])[0], embeds[0])


def test_token_spans_locate_multi_token_words(tiny_pipes):
    tokenizer = tokenizers(tiny_pipes("sd1"))[0]
    span = token_span(tokenizer, "a photo of", "a photo of Mira Kestrel")
    assert (span.start, span.stop) == (4, 7)  # BOS a photo of | mira ke strel
    ids = tokenizer("a photo of Mira Kestrel").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[span.start : span.stop]) == [
        "mira</w>",
        "ke",
        "strel</w>",
    ]
    assert token_span(tokenizer, "", "circle") == TokenSpan(1, 2, 77)


def test_alignment_maps_concept_and_suffix_tokens():
    # "a red circle" -> "a red": circle (3) maps to the EOS where it was removed,
    # the suffix shifts by one
    pairs = aligned_positions(TokenSpan(3, 4, 77), TokenSpan(3, 3, 77))
    assert pairs[0] == (3, 3) and pairs[1] == (4, 3) and pairs[-1] == (76, 75)
    assert len(pairs) == 1 + 73
    # 3-token name -> 2-token anchor: proportional, then one-to-one after the spans
    pairs = aligned_positions(TokenSpan(4, 7, 77), TokenSpan(4, 6, 77))
    assert pairs[:3] == [(4, 4), (5, 4), (6, 5)] and pairs[3] == (7, 6) and pairs[-1] == (76, 75)
    # anchor longer than the concept: nothing maps past the end
    pairs = aligned_positions(TokenSpan(1, 2, 77), TokenSpan(1, 3, 77))
    assert all(q < 77 for _, q in pairs) and pairs[-1] == (75, 76)


def test_perturbation_changes_only_what_follows_the_concept(tiny_pipes):
    pipe = tiny_pipes("sd1")
    clean = encode_prompts(pipe, ["a red circle", "a photo of a cat"])
    with perturbed_token_embeddings(pipe, [[3], []], 0.3, torch.Generator().manual_seed(0)):
        noisy = encode_prompts(pipe, ["a red circle", "a photo of a cat"], batch_size=2)
    assert torch.equal(noisy[0, :3], clean[0, :3])  # causal: tokens before are unchanged
    assert not torch.allclose(noisy[0, 3:], clean[0, 3:])
    assert torch.equal(noisy[1], clean[1])  # the other prompt had no positions
    assert torch.equal(encode_prompts(pipe, ["a red circle"])[0], clean[0])  # hook removed


def test_fingerprint_ignores_float16_rounding_and_sees_edits(tiny_pipes):
    pipe = tiny_pipes("sd1")
    before = fingerprint(pipe)
    _, module = cross_attention_layers(pipe.unet)[0]
    original = module.to_v.weight.detach().clone()
    with torch.no_grad():
        module.to_v.weight.add_(1e-9)  # below float16 resolution for most entries
        assert fingerprint(pipe) == before
        module.to_v.weight.add_(0.1)
        assert fingerprint(pipe) != before
        module.to_v.weight.copy_(original)
    assert fingerprint(pipe) == before


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
