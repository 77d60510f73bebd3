#!/usr/bin/env bash
# Issue 16, while no GPU was lent: a short CPU fine-tune of the bundled weights on generator 2.0 (224 only,
# one torch thread, one render worker), scored against the bundled weights on the held-out set (400 scenes
# from held-out sources), the 2.0 validation set (600, seed 991) and the 1.0 validation set (1000, seed 999).
# A signal for the GPU recipe (scripts/gpu_train.sh v2), not a release: results in
# benchmarks/results/training/cpu_v2_signal/. Needs data_sources/ (`polydet data sources`). ~45 min on 2 cores.
# V1_MIX=0.5 trains with that share of generator-1.0 scenes (the preset's 0.25 otherwise), LR0 sets lr0
# (0.003); the scoring sets are the same either way.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=${W:-/tmp/cput} P=.venv/bin/polydet PY=.venv/bin/python
test -f data_sources/manifest.json || { echo "data_sources/ missing: run polydet data sources" >&2; exit 2; }
[ -f "$W/v2val150/dataset.json" ] || $P data synth "$W/v2val150" --preset train --n 150 --seed 991 --workers 1 --no-progress
$P train --synth train --imgsz 224 --init weights/polydet_main_area.pt --val "$W/v2val150" --workers 1 \
  --out "$W/ft" --epochs 5 --epoch-size 2048 --batch 32 --reuse 4 --replay-batches 4 --box 0.25 \
  --warmup-epochs 0.1 --lr0 "${LR0:-0.003}" --val-every 5 --device cpu --seed 4100 --time-budget-min 48 \
  ${V1_MIX:+--v1-mix "$V1_MIX"}
$PY -c 'import sys; from polydet.model import load_model, save_checkpoint
m, i = load_model(sys.argv[1], imgsz=224); save_checkpoint(sys.argv[2], m, i)' "$W/ft/best.pt" "$W/ft224.pt"
[ -f "$W/heldout/dataset.json" ] || $P data heldout "$W/heldout" --n 400 --workers 2 --no-progress
[ -f "$W/v2val600/dataset.json" ] || $P data synth "$W/v2val600" --preset train --n 600 --seed 991 --workers 2 --no-progress
[ -f "$W/val/dataset.json" ] || $P data synth "$W/val" --n 1000 --seed 999 --workers 2 --no-progress
for s in heldout v2val600 val; do
  for pair in "new:$W/ft224.pt" old:weights/polydet_main_area.pt; do
    n=${pair%%:*} w=${pair#*:}
    $P data report --model "$w" --data "$W/$s" --device cpu --imgsz 224 --out "$W/report_${n}_$s" >/dev/null
    echo "$n on $s: $(sed -n 3p "$W/report_${n}_$s/report.md")"
  done
done
