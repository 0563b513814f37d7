"""Edits of the text encoders' *input* token embeddings, for every pipeline family.

A text encoder maps token ids to input embeddings (``get_input_embeddings()``), then runs its
transformer. Editing the embeddings between those two steps reaches every conditioning path
the pipeline has (SDXL: both encoders, the pooled embedding included), through the pipeline's
own ``encode_prompt``:

- :func:`input_embedding_edit`: the general hook — a function of (encoder index, token ids,
  embeddings) that returns new embeddings, inside a ``with`` block.
- :func:`perturbed_token_embeddings`: random perturbations at chosen positions (stage 0's mined
  neighbours: nearby ways of saying a concept).
- :class:`SoftTokens`: ``k`` trainable vectors per encoder written over placeholder tokens in
  the prompt (soft-prompt attacks, textual inversion, adversarial training). The placeholder
  is a rare word (``PLACEHOLDER``) that :meth:`SoftTokens.prompt` inserts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from ace_erasure.errors import ConfigError
from ace_erasure.models.plumbing import text_encoders, tokenizers

# (encoder index, input ids (batch, tokens), embeddings (batch, tokens, dim)) -> embeddings
EmbeddingEdit = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
PLACEHOLDER = "sks"  # one CLIP BPE token, rare in prompts; soft tokens are written over it


@contextlib.contextmanager
def input_embedding_edit(pipe, edit: EmbeddingEdit) -> Iterator[None]:
    """Within the block, every text encoder of ``pipe`` sees ``edit(i, ids, embeddings)``
    instead of its input token embeddings (gradients flow through ``edit``)."""
    handles = []
    for index, encoder in enumerate(text_encoders(pipe)):
        embedding = encoder.get_input_embeddings()

        def hook(_module, inputs, output, index=index) -> torch.Tensor:
            return edit(index, inputs[0], output)

        handles.append(embedding.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def perturbed_token_embeddings(
    pipe, positions: Sequence[Sequence[int]], radius: float, generator: torch.Generator
) -> contextlib.AbstractContextManager[None]:
    """Within the block, add random noise to the input token embeddings at ``positions[i]`` of
    prompt ``i`` in every text encoder (norm = ``radius`` x the embedding's norm).

    This mines neighbours of a concept in the encoder's input space: the encoder's outputs for
    the perturbed prompts are nearby ways of saying the concept (RealEra's idea). Batches of
    another size (e.g. an unconditional pass) are left alone.
    """

    def edit(_index: int, _ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] != len(positions):
            return output
        output = output.clone()
        for row, cols in enumerate(positions):
            if not cols:
                continue
            index = torch.as_tensor(list(cols))
            base = output[row, index]
            noise = torch.randn(base.shape, generator=generator, dtype=torch.float32).to(base)
            noise = noise / noise.norm(dim=-1, keepdim=True) * base.norm(dim=-1, keepdim=True)
            output[row, index] = base + noise * radius
        return output

    return input_embedding_edit(pipe, edit)


class SoftTokens(nn.Module):
    """``k`` trainable input-embedding vectors per text encoder.

    :meth:`prompt` puts ``k`` placeholder tokens into a prompt (before it by default); inside
    :meth:`injected`, every prompt that holds exactly ``k`` placeholders has them replaced, in
    order, by the vectors; prompts without placeholders (e.g. the unconditional one) are left
    alone. ``vectors[i]`` is (k, width of encoder i).
    """

    def __init__(self, pipe, k: int, init: torch.Tensor | Sequence[torch.Tensor] | None = None):
        super().__init__()
        if k < 1:
            raise ConfigError(f"soft tokens: k must be >= 1, got {k}")
        self.k = k
        encoders = text_encoders(pipe)
        self.placeholder_ids = []
        for tokenizer in tokenizers(pipe):
            ids = tokenizer(PLACEHOLDER, add_special_tokens=False).input_ids
            if len(ids) != 1:  # pragma: no cover - every CLIP vocabulary has it as one token
                raise ConfigError(f"{PLACEHOLDER!r} is not one token in this tokenizer")
            self.placeholder_ids.append(int(ids[0]))
        if init is None:  # the placeholder's own embedding, k times
            init = [
                encoder.get_input_embeddings().weight.detach()[[token_id] * k]
                for encoder, token_id in zip(encoders, self.placeholder_ids)
            ]
        elif isinstance(init, torch.Tensor):
            init = [init]
        if len(init) != len(encoders):
            raise ConfigError(
                f"soft tokens: {len(init)} initial tensors for {len(encoders)} encoders"
            )
        self.vectors = nn.ParameterList(
            [nn.Parameter(t.detach().float().clone().reshape(k, -1)) for t in init]
        )

    @classmethod
    def from_tokens(cls, pipe, token_ids: Sequence[int]) -> SoftTokens:
        """Initialised from the input embeddings of ``token_ids`` (k = their number)."""
        index = torch.as_tensor(list(token_ids))
        init = [e.get_input_embeddings().weight.detach()[index] for e in text_encoders(pipe)]
        return cls(pipe, len(token_ids), init)

    @classmethod
    def random_vocabulary(cls, pipe, k: int, generator: torch.Generator) -> SoftTokens:
        """Initialised from ``k`` random vocabulary tokens (UnlearnDiffAtk's start)."""
        vocab = text_encoders(pipe)[0].get_input_embeddings().weight.shape[0]
        ids = torch.randint(0, vocab - 2, (k,), generator=generator).tolist()
        return cls.from_tokens(pipe, ids)

    def vector_state(self) -> dict[str, torch.Tensor]:
        """Copies of the vectors, ``vectors.<i>`` (for checkpoints and warm starts)."""
        return {f"vectors.{i}": v.detach().clone() for i, v in enumerate(self.vectors)}

    def load_vector_state(self, state: dict[str, torch.Tensor]) -> None:
        """Set the vectors from :meth:`vector_state`'s output."""
        with torch.no_grad():
            for i, v in enumerate(self.vectors):
                v.copy_(state[f"vectors.{i}"])

    def prompt(self, text: str, position: str = "prefix") -> str:
        """``text`` with the k placeholders before it ("prefix") or after it ("suffix")."""
        placeholders = " ".join([PLACEHOLDER] * self.k)
        return f"{placeholders} {text}" if position == "prefix" else f"{text} {placeholders}"

    def _edit(self, index: int, ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        mask = ids == self.placeholder_ids[index]
        counts = mask.sum(1)
        rows = counts > 0
        if not bool(rows.any()):
            return output
        if bool((counts[rows] != self.k).any()):
            raise ConfigError(
                f"a prompt holds {int(counts[rows][0])} placeholders {PLACEHOLDER!r}, "
                f"expected {self.k} (use SoftTokens.prompt)"
            )
        vectors = self.vectors[index].to(output.dtype)
        output = output.clone()
        output[mask] = vectors.repeat(int(rows.sum()), 1)
        return output

    def injected(self, pipe) -> contextlib.AbstractContextManager[None]:
        """Within the block, the pipeline's encoders see the vectors at the placeholders."""
        return input_embedding_edit(pipe, self._edit)

    def nearest_tokens(self, pipe) -> list[list[int]]:
        """Per encoder, the vocabulary token nearest (cosine) to each vector."""
        out = []
        for vectors, encoder in zip(self.vectors, text_encoders(pipe)):
            table = encoder.get_input_embeddings().weight.detach().float()
            sims = (
                nn.functional.normalize(vectors.detach().float(), dim=-1)
                @ nn.functional.normalize(table, dim=-1).T
            )
            out.append(sims.argmax(-1).tolist())
        return out
