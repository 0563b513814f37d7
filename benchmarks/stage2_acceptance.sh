#!/usr/bin/env bash
# Issue #10's closing table: ACE stage 2's default (and stage 1 where it was measured after the
# noising fix) on every ToyWorld concept, both ToyWorlds side by side, merged from the
# compare.py folders that measured each attack (benchmarks/README.md, "Latest results", has
# the command that made each folder). Seconds; reads results only.
#   bash benchmarks/stage2_acceptance.sh   ->  benchmarks/results/stage2_acceptance.md
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
folders=(
  # stage 2 (default): soft and random on circle, heart and the families; TI on the shapes;
  # hard and the conditioning bound on the shapes; hard and TI on the families; Mira
  # Kestrel's TI judged from its start; Okonkwo; the conditioning bound on the families
  stage2_preserve_images64 stage2_preserve_images64_ti stage2_circle_heart_hard_cond
  stage2_families_hard_ti stage2_mira_ti_start stage2_okonkwo stage2_families_cond
  # every other concept, erased alone: efficacy, specificity and the random prefix
  stage2_every_concept
  # all ten shapes at once: soft and random; hard
  stage2_all_shapes64 compare_all_shapes_hard
  # stage 1, measured the same way after the noising fix: circle and heart; soft, random and
  # the conditioning bound on the families (stop 29)
  compare_noise_fix compare_noise_fix_hard stage1_families
)
shapes=(circle heart square triangle star cross diamond hexagon crescent arrow)
styles=(Varela Okonkwo Lindqvist Moreau Castellanos Hoshino)
characters=("Mira Kestrel" "Tobias Wrenfield" "Odile Marchetti" "Bram Ostrowski" "Yuki Halvorsen"
  "Cassius Thorne" "Lena Quartermaine" "Rufus Pennyworth" "Zara Okafor" "Hugo Falkenrath")
python benchmarks/compare_table.py "${folders[@]/#/$R/}" --by-seed \
  --concepts "${shapes[@]}" "${styles[@]}" "${characters[@]}" hazard all-shapes \
  --variants "ace (stage 2)" "ace (stage 1)" \
  --rename "ace (stage 2, 64 images)=ace (stage 2)" --out "$R/stage2_acceptance.md"
