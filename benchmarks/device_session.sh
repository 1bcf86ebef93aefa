#!/usr/bin/env bash
# Everything a session lent a GPU should measure, in one device call, most important first:
# the decode engine end to end against the `zdiff cost` floor, then the device checks and the
# `gpu`-marked tests, then whole training steps, then kernel timings. Each stage has its own
# time limit, so one that hangs or fails does not cost the others; results land in $OUT/<stage>.
#
#   run:  bash benchmarks/device_session.sh            (on the GPU machine; $OUT from the device tool)
#   budget: about 9 minutes in all (the device tool allows 10 per call, 15 per session).
set -u
OUT=${OUT:-device-results}
export PYTHONPATH=.
unset TRITON_INTERPRET
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/card.csv" 2>&1 || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" > "$OUT/versions.txt"

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/stages.txt"
}

stage decode_4k 240 python benchmarks/decode_bench.py --out "$OUT/decode_4k" --contexts 4096 --steps 12
stage gpu_checks 150 python benchmarks/gpu_session.py --out "$OUT/gpu_checks" \
    --stages verifier,generated_model,gpu_tests
stage train 90 python benchmarks/train_bench.py --out "$OUT/train" --steps 3
stage decode_32k 60 python benchmarks/decode_bench.py --out "$OUT/decode_32k" --contexts 32768 --batches 1 8 \
    --proposals 0 3 --steps 8
tail -n 40 "$OUT"/*/results.md 2>/dev/null
cat "$OUT/stages.txt"
