"""Robustness of ACE under attack, stage 1 against stage 1+2, on every ToyWorld given
(issues #9 and #10).

For each model, each concept (circle, heart, the style Varela, the character Mira Kestrel,
the hazard) and each variant (ACE stage 1; ACE with stage 2), the concept is erased alone and
evaluated on the same prompts and seeds (``ace_erasure.evaluation.evaluate``): Acc_e, Acc_g,
Acc_s with the unedited values, the no-attack rate, and the random-prefix, soft-prompt (per
seed, k = 5, 3 for a style, 40 steps), hard-prompt (universal PEZ text), textual-inversion and
conditioning-space ASR, each beside the unedited model's rate under the same attack and the
text-blind control's (and that control's chance rate); erase seconds and peak memory. Attack
pairs are (prompt, seed) pairs the unedited model draws the concept in; optimised attacks have
the judge in the loop (checks every few steps, early stop on success).

    python benchmarks/robustness.py                                              # bundled
    python benchmarks/robustness.py --model bundled --model benchmarks/toyworlds/seed1
    python benchmarks/robustness.py --concepts circle --pairs 8 --variants "stage 1=ace:stage=1"
"""

from pathlib import Path

from bench_common import interruptible, main

if __name__ == "__main__":
    interruptible(
        lambda: main(
            __doc__,
            ["stage 1=ace:stage=1", "stage 1+2=ace:stage=2"],
            Path(__file__).parent / "results" / "robustness",
        )
    )
