#!/usr/bin/env bash
# Everything that needs a GPU, in one command for a lent device (the `device` tool's
# `run`, from the repo root): GPU-marked tests, then the GPU benchmarks. Results land in
# benchmarks/results/ and, when $OUT is set (the device tool), are copied there too.
#
# Peers (bitsandbytes, torchao) travel as wheels in .whl/ (see the device tool's README);
# without them their rows are skipped with the reason recorded.
#
#     bash benchmarks/gpu_all.sh [quick]      # quick: fewer steps, smaller models
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
steps=20; layers=4; paging_model=1b
if [ "${1:-}" = quick ]; then steps=5; layers=1; fi
results=benchmarks/results
mkdir -p "$results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$results/gpu_device.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$results/gpu_tests.log"
python3 benchmarks/step_gpu.py --layers "$layers" --steps "$steps" 2>&1 | tee "$results/step_gpu.log"
python3 benchmarks/paging_gpu.py --model "$paging_model" --steps 5 2>&1 | tee "$results/paging_gpu.log"
if [ -n "${OUT:-}" ]; then
    cp "$results"/gpu_device.txt "$results"/*gpu*.log "$results"/step_gpu.* "$results"/paging_gpu.* "$OUT"/ 2>/dev/null
fi
