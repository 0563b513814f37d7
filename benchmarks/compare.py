"""Every method on one bench (issue #11): each method's defaults, the same concepts, prompts,
seeds, judge and attacks, on every ToyWorld given.

Concepts: circle, heart, the style Varela, the character Mira Kestrel, the hazard, and all ten
shapes at once ("all-shapes"). Per (method, concept): Acc_e, Acc_g, Acc_s with the unedited
values, H, the no-attack rate and each attack's ASR (with its sanity controls), erase seconds
and peak memory (``results/compare/<seed>/<concept>/report.html`` shows the images).

    python benchmarks/compare.py --model bundled --model benchmarks/toyworlds/seed1
    python benchmarks/compare.py --concepts circle --variants ace uce rece speed --pairs 8
"""

from pathlib import Path

from bench_common import CONCEPTS, interruptible, main

METHODS = [
    "ace",
    "ace (stage 2)=ace:stage=2",
    "uce",
    "rece",
    "speed",
    "mace",
    "esd-x",
    "esd-u",
    "advunlearn",
]

if __name__ == "__main__":
    import sys

    if "--concepts" not in sys.argv:
        sys.argv += ["--concepts", *CONCEPTS, "all-shapes"]
    interruptible(lambda: main(__doc__, METHODS, Path(__file__).parent / "results" / "compare"))
