import copy

import pytest
import torch

from ace_erasure.models.conditioning import encode_prompts
from ace_erasure.models.plumbing import (
    TokenSpan,
    aligned_positions,
    cross_attention_layers,
    fingerprint,
    model_family,
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


def test_fingerprint_covers_text_encoders_and_tokenizers(tiny_pipes):
    pipe = tiny_pipes("sdxl")
    parts = fingerprint(pipe)
    assert set(parts) == {"unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"}
    weight = pipe.text_encoder_2.get_input_embeddings().weight
    with torch.no_grad():
        weight.mul_(1.01)
        changed = fingerprint(pipe)
        weight.div_(1.01)
    assert [p for p in parts if parts[p] != changed[p]] == ["text_encoder_2"]
    original = pipe.tokenizer
    pipe.tokenizer = copy.deepcopy(original)
    try:
        pipe.tokenizer.add_tokens(["<new-word>"])
        assert fingerprint(pipe)["tokenizer"] != parts["tokenizer"]
    finally:
        pipe.tokenizer = original
    assert fingerprint(pipe) == parts


def test_fingerprint_of_edited_unet_modules(tiny_pipes):
    pipe = tiny_pipes("sd1")
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    plain, with_module = fingerprint(pipe)["unet"], fingerprint(pipe, [key])["unet"]
    assert plain != with_module  # the edited module's weights are part of the UNet's hash
    module = pipe.unet.get_submodule(key.split(".", 1)[1])
    with torch.no_grad():
        module.weight.add_(0.1)
        assert (
            fingerprint(pipe)["unet"] == plain and fingerprint(pipe, [key])["unet"] != with_module
        )
        module.weight.sub_(0.1)
