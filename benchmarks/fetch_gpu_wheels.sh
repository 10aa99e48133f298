#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) exactly the wheels the GPU run needs and the device's
# image lacks (bitsandbytes, torchao, lion-pytorch, came-pytorch; pinned in gpu_wheels.py)
# for CPython 3.12 on x86-64 Linux, checks their tags and requirements, and prints their
# size plus the working tree's against the 64 MiB one device call carries. Exit 1 when a
# download, a check or the size fails (the previous .whl/ is then left as it was).
#
#     bash benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_wheels.py fetch --dest .whl "$@"
