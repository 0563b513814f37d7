"""How far each shape's conditioning is from one shape's, in the units of the conditioning-space
attack's bound (benchmarks/README.md, "Where the inner attack works"): for "a picture of a
<shape>", the largest per-token distance to the reference shape's encoding, over the
reference's mean token norm. Prints one JSON line per ToyWorld.

    python benchmarks/conditioning_distance.py bundled benchmarks/toyworlds/seed1
    python benchmarks/conditioning_distance.py bundled --reference heart
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import ace_erasure
from ace_erasure.models.conditioning import encode_conditioning
from ace_erasure.toyworld.assets import bundled_dir, manifest
from ace_erasure.toyworld.vocab import vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="ToyWorld folders or 'bundled'")
    parser.add_argument("--reference", default="circle", help="the shape measured from")
    args = parser.parse_args()
    shapes = list(vocabulary().shapes)
    if args.reference not in shapes:
        parser.error(f"--reference must be a ToyWorld shape ({', '.join(shapes)})")
    folders = [bundled_dir() if m == "bundled" else Path(m) for m in args.models]
    try:
        seeds = [manifest(f)["config"]["seed"] for f in folders]
    except ace_erasure.errors.AceError as error:
        parser.error(str(error))
    for folder, seed in zip(folders, seeds):
        pipe = ace_erasure.load_pipeline(folder)
        with torch.no_grad():
            embeds = encode_conditioning(pipe, [f"a picture of a {s}" for s in shapes]).embeds
        reference = embeds[shapes.index(args.reference)]
        scale = reference.norm(dim=-1).mean()
        distance = {
            s: round(float((embeds[i] - reference).norm(dim=-1).max() / scale), 3)
            for i, s in enumerate(shapes)
        }
        print(json.dumps({"toyworld_seed": seed, "reference": args.reference, **distance}))


if __name__ == "__main__":
    from bench_common import interruptible

    interruptible(main)
