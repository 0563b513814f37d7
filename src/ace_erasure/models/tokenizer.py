"""The real CLIP BPE tokenizer, built offline from the vocabulary file shipped in the package.

``data/bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's BPE file (MIT licence, see
``data/CLIP_BPE_LICENSE.txt``). Converted to ``vocab.json`` + ``merges.txt`` it gives a
``CLIPTokenizer`` with exactly the token ids of Stable Diffusion 1.x (49,408 tokens, BOS 49406,
EOS = PAD 49407), so multi-token words and EOS/padding behave as on the real models.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILE = "data/bpe_simple_vocab_16e6.txt.gz"
MAX_LENGTH = 77
# CLIP's BPE file lists 262,144 merges; CLIP keeps the first 49152 - 256 - 2 of them.
N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE, in CLIP's order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_vocabulary(out_dir: str | Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = resources.files("ace_erasure").joinpath(BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def build_tokenizer(out_dir: str | Path) -> CLIPTokenizer:
    """Write the CLIP vocabulary to ``out_dir`` and load it as a ``CLIPTokenizer`` (77 tokens)."""
    directory = write_clip_vocabulary(out_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(directory))
    tokenizer.model_max_length = MAX_LENGTH
    return tokenizer
