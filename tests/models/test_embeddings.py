"""Edits of the text encoders' input token embeddings: perturbations and soft tokens."""

import pytest
import torch

from ace_erasure.errors import ConfigError
from ace_erasure.models.conditioning import encode_conditioning, encode_prompts
from ace_erasure.models.embeddings import PLACEHOLDER, SoftTokens, perturbed_token_embeddings


def test_perturbation_changes_only_what_follows_the_concept(tiny_pipes):
    pipe = tiny_pipes("sd1")
    clean = encode_prompts(pipe, ["a red circle", "a photo of a cat"])
    with perturbed_token_embeddings(pipe, [[3], []], 0.3, torch.Generator().manual_seed(0)):
        noisy = encode_prompts(pipe, ["a red circle", "a photo of a cat"], batch_size=2)
    assert torch.equal(noisy[0, :3], clean[0, :3])  # causal: tokens before are unchanged
    assert not torch.allclose(noisy[0, 3:], clean[0, 3:])
    assert torch.equal(noisy[1], clean[1])  # the other prompt had no positions
    assert torch.equal(encode_prompts(pipe, ["a red circle"])[0], clean[0])  # hook removed


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_soft_tokens_replace_the_placeholders_in_every_encoder(tiny_pipes, family):
    pipe = tiny_pipes(family)
    soft = SoftTokens.random_vocabulary(pipe, 3, torch.Generator().manual_seed(0))
    prompt = soft.prompt("a red circle")
    assert prompt == f"{PLACEHOLDER} {PLACEHOLDER} {PLACEHOLDER} a red circle"
    plain = encode_prompts(pipe, [prompt, "a red circle"])
    with soft.injected(pipe):
        injected = encode_conditioning(pipe, [prompt, "a red circle"])
    assert not torch.allclose(injected.embeds[0], plain[0])  # the vectors replaced the words
    assert torch.allclose(injected.embeds[1], plain[1])  # a prompt without placeholders
    assert (injected.pooled is not None) == (family == "sdxl")
    # gradients reach the vectors of every encoder
    injected.embeds[0].sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in soft.vectors)
    # vectors taken from vocabulary tokens give exactly the conditioning of those token ids
    ids = [int(i) for i in torch.randint(1000, 5000, (3,), generator=torch.Generator())]
    exact = SoftTokens.from_tokens(pipe, ids)
    with exact.injected(pipe), torch.no_grad():
        again = encode_conditioning(pipe, [prompt]).embeds
    if family != "sdxl":  # SD: the conditioning is the encoder's last hidden state
        input_ids = pipe.tokenizer(prompt, padding="max_length", return_tensors="pt").input_ids
        input_ids[0, 1:4] = torch.tensor(ids)
        with torch.no_grad():
            direct = pipe.text_encoder(input_ids)[0]
        assert torch.allclose(again[0], direct[0], atol=1e-5)
    assert torch.equal(encode_prompts(pipe, [prompt])[0], plain[0])  # hooks removed


def test_soft_tokens_refuse_a_wrong_number_of_placeholders(tiny_pipes):
    pipe = tiny_pipes("sd1")
    soft = SoftTokens(pipe, 2)
    with pytest.raises(ConfigError, match="expected 2"), soft.injected(pipe):
        encode_conditioning(pipe, [f"{PLACEHOLDER} a red circle"])
    with pytest.raises(ConfigError, match="k must be"):
        SoftTokens(pipe, 0)
