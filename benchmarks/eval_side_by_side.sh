#!/usr/bin/env bash
# Score the demo's AR and converted (TiDAR) checkpoints side by side on the local lm-eval tasks:
# AR scores, TiDAR-lossless generation (equal to AR in law), TiDAR-logit-mix at w = 0.5, each with T/NFE.
#
#   benchmarks/eval_side_by_side.sh [RUNS]          # RUNS: a `zdiff demo --out` directory (default runs/demo)
#   TRAIN=1 AR_STEPS=120 TIDAR_STEPS=60 benchmarks/eval_side_by_side.sh runs/eval-demo
#                                                   # first train a reduced demo pair there (CPU: minutes)
# Writes RUNS/eval/*.json (lm-eval's JSON with the decoding settings) and prints one table.
set -euo pipefail
RUNS=${1:-runs/demo}
ZDIFF=${ZDIFF:-zdiff}
TASKS=zdiff_python_mc,zdiff_python_gen
INCLUDE=$(dirname "$0")/../tests/lm_eval_tasks
if [[ "${TRAIN:-0}" == 1 ]]; then
  common=(--data stdlib --batch-size "${BATCH:-32}" --seq-len 128 --eval-windows 16 --warmup 30)
  $ZDIFF train zaya1-tiny --mode ar --steps "${AR_STEPS:-360}" --lr 3e-3 --out "$RUNS/ar" "${common[@]}"
  $ZDIFF train zaya1-tiny --mode tidar --init "$RUNS/ar/final" --steps "${TIDAR_STEPS:-200}" --lr 1e-3 \
    --out "$RUNS/tidar" "${common[@]}"
fi
mkdir -p "$RUNS/eval"
run() {  # name checkpoint flags...
  local name=$1 ckpt=$2; shift 2
  $ZDIFF eval "$ckpt" --tasks "$TASKS" --include-path "$INCLUDE" --seed 0 --output "$RUNS/eval/$name.json" "$@" \
    > "$RUNS/eval/$name.txt"
}
run ar-model "$RUNS/ar/final" --mode ar --sampler lossless
run converted-ar "$RUNS/tidar/final" --mode ar --sampler lossless
run converted-tidar-lossless "$RUNS/tidar/final" --mode tidar --sampler lossless
run converted-tidar-logit-mix "$RUNS/tidar/final" --mode tidar --sampler logit_mix --mix-weight 0.5
python3 - "$RUNS/eval" <<'PY'
import json, sys, pathlib
rows = []
for name in ("ar-model", "converted-ar", "converted-tidar-lossless", "converted-tidar-logit-mix"):
    r = json.loads((pathlib.Path(sys.argv[1]) / f"{name}.json").read_text())
    mc, gen, z = r["results"]["zdiff_python_mc"], r["results"]["zdiff_python_gen"], r["zdiff"]
    rows.append(f"| {name} | {z['mode']} {z['sampler']}{' w=%g' % z['mix_weight'] if z['sampler'] == 'logit_mix' else ''}"
                f" | {mc['acc,none']:.2f} | {mc['acc_norm,none']:.2f} | {gen['exact_match,none']:.2f}"
                f" | {z['tokens_per_forward']:.2f} |")
print("| checkpoint | decoding | mc acc (10) | mc acc_norm | gen exact match (6) | gen T/NFE |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
PY
