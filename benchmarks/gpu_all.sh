#!/usr/bin/env bash
# Every GPU figure the open issues ask for, in one time-boxed command for a lent device (the
# device tool's `run`, from the repo root, with `.whl` carried): the GPU tests, then
# step_gpu, paging_gpu, planner_gpu, offload_gpu, step_cpu_host (the CPU step on the host's
# cores) and moonshot_gpu (once it exists), each under its own budget
# (benchmarks/gpu_phases.py). Two files come back in $OUT:
# gpu_summary.md (each GPU target of the open issues: measured value, pass/fail) and
# gpu_results.tar.gz (every table and log). See docs/benchmarks.md, "Measuring on a GPU".
#
#     bash benchmarks/fetch_gpu_wheels.sh      # here, once: the peers' wheels into .whl/
#     bash benchmarks/gpu_all.sh               # on the device: full run, <= 9 minutes
#     bash benchmarks/gpu_all.sh --quick       # <= 6 minutes: smaller models, fewer steps
#     bash benchmarks/gpu_all.sh --dry-run     # anywhere, no CUDA: every phase's setup and the packing
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
args=()
measuring=1
for arg in "$@"; do
    case "$arg" in
        quick) args+=(--quick) ;;  # the old spelling
        --dry-run|-h|--help) measuring=0; args+=("$arg") ;;
        *) args+=("$arg") ;;
    esac
done
if [ "$measuring" = 1 ]; then
    export TRITON_INTERPRET=0  # real kernels (tests/conftest.py only sets it when unset)
    if compgen -G ".whl/*.whl" >/dev/null; then
        # wheels for CPython 3.12 (the device's image): never installed by a dry run elsewhere
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH="$PYTHONPATH:/tmp/site" \
            || echo "installing .whl/ failed: the peers' rows and tests will say they are missing" >&2
    else
        echo "no wheels in .whl/ (run benchmarks/fetch_gpu_wheels.sh first): bitsandbytes, torchao, lion and CAME rows skip" >&2
    fi
fi
exec python3 benchmarks/gpu_phases.py "${args[@]}"
