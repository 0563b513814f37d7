"""Probe one attack on one concept: the unedited model, the text-blind control or the erased
model (ACE defaults), on the evaluation's attack pairs. How the attack defaults were chosen
(docs/design-notes.md, "The judge in the loop"); prints one JSON line per case.

    python benchmarks/attack_probe.py bundled "hazard:ti" "Varela:cond:unedited:lr=0.05"
    python benchmarks/attack_probe.py benchmarks/toyworlds/seed1 "circle:ti:erased"

A case is ``concept:attack[:unedited|blind|erased[:key=value,...]]``.
"""

import json
import sys
import time
from pathlib import Path

import ace_erasure
from ace_erasure.evaluation import sharding
from ace_erasure.evaluation.evaluate import EvaluateSettings, _Run
from ace_erasure.evaluation.robustness import text_blind
from ace_erasure.methods.base import parse_overrides
from ace_erasure.toyworld.assets import bundled_dir
from ace_erasure.toyworld.world import ToyWorld


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    folder = bundled_dir() if argv[0] == "bundled" else Path(argv[0])
    world = ToyWorld(folder)
    pipe = ace_erasure.load_pipeline(folder)
    settings = EvaluateSettings(
        seed=0, steps=world.sampling.steps, guidance=world.sampling.guidance, attack_pairs=16
    )
    run = _Run(
        pipe,
        world.judge(),
        lambda c: world.suite(c, 16, 4, 0),
        settings,
        None,
        None,
        ace_erasure.apply,
        sharding.SINGLE,
    )
    for case in argv[1:]:
        concept, name, *rest = case.split(":")
        mode = rest[0] if rest else "unedited"
        options = parse_overrides(rest[1].split(",")) if len(rest) > 1 else {}
        run.settings.attack_options[name] = options
        resolved = world.resolve(concept)
        pairs, target, rate, selection = run.reference(run.suite_for(resolved))
        start = time.perf_counter()
        if mode == "erased":
            erasure = ace_erasure.erase(pipe, [resolved], seed=0, world=world)
            with ace_erasure.apply(erasure, pipe, fuse=True):
                result = run.attack(name, target, pairs, resolved.kind)
        elif mode == "blind":
            with text_blind(pipe):
                result = run.attack(name, target, pairs, resolved.kind)
        else:
            result = run.attack(name, target, pairs, resolved.kind)
        record = {
            "model": str(folder),
            "concept": concept,
            "attack": name,
            "mode": mode,
            "options": options,
            "config": result["config"],
            "pair_selection": selection,
            "no_attack_rate_unedited": rate,
            "asr": result["rate"],
            "steps_run": [len(curve) for curve in result["losses"]],
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
