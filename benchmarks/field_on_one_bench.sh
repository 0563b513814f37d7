#!/usr/bin/env bash
# Issue #11's closing table: every method on every ToyWorld family, both ToyWorlds side by side,
# merged from the compare.py folders that measured each attack (see benchmarks/README.md,
# "Latest results", for the command that made each folder). Seconds; reads results only.
#   bash benchmarks/field_on_one_bench.sh   ->  benchmarks/results/field_on_one_bench.md
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
folders=(
  # ACE stage 2 (default): soft and random; TI; hard and the conditioning upper bound on the
  # shapes; hard and TI on the families; Mira Kestrel's TI judged from its start; ten shapes
  stage2_preserve_images64 stage2_preserve_images64_ti stage2_circle_heart_hard_cond
  stage2_families_hard_ti stage2_mira_ti_start stage2_all_shapes64
  # the baselines on circle and heart: soft, hard, TI
  compare_noise_fix_baselines compare_noise_fix_baselines_hard compare_noise_fix_baselines_ti
  # on the style, the character and the hazard: soft, hard, TI
  compare_noise_fix_baselines_families compare_noise_fix_baselines_families_hard
  compare_noise_fix_baselines_families_ti compare_hazard_ti_esdx_advunlearn
  compare_mira_ti_esdx_advunlearn compare_families_ti_closed_form_esdu
  # all ten shapes at once
  compare_noise_fix_all_shapes_baselines compare_all_shapes_hard compare_all_shapes_speed
  compare_all_shapes_rest
)
python benchmarks/compare_table.py "${folders[@]/#/$R/}" --by-seed \
  --concepts circle heart Varela "Mira Kestrel" hazard all-shapes \
  --variants "ace (stage 2)" advunlearn esd-x esd-u mace uce rece speed \
  --rename "ace (stage 2, 64 images)=ace (stage 2)" --out "$R/field_on_one_bench.md"
