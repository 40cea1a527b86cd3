#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one call (a lent GPU's time is short): the CUDA tests, the training step's
# throughput against the authors' step on the GPU (with the bit-for-bit check of every exact product), and README's
# first command on the GPU. Run from the repository root on the GPU machine:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Python packages that machine lacks (snnTorch, Norse, NIR, mlxtend; all pure Python) may be copied into
# .gpu_site/, which goes on PYTHONPATH. Logs and results go to $OUT (default: ./gpu_check_out).
set -o pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'CUDA', torch.version.cuda)"
echo "== CUDA tests"
python3 -m pytest -q -o addopts="" -p no:cacheprovider -rs tests/test_cuda.py tests/test_binary_linear.py 2>&1 \
    | grep -v -E "^USDT|DEBUG" | tee "$OUT/pytest_cuda.log" | tail -25
echo "== training throughput on the GPU"
(cd benchmarks && python3 train_throughput.py --device cuda --hidden 1024 4096 --rounds 20 --steps-per-round 5 \
    --out "$OUT/train_throughput_cuda.txt" 2>&1 | grep -v -E "^USDT|profiler")
echo "== README's first command on the GPU"
cd "$(mktemp -d)" && TIMEFORMAT="%R s wall" && time (python3 -m metaspike compare --quiet --device cuda 2>&1 | tail -15)
