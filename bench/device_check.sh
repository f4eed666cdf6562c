#!/usr/bin/env bash
# The GPU checks, prepared to run in few calls on a lent GPU machine that has python3 with torch, torchvision
# and timm, and no network (issue 19 items 2 and 4). Each check has its own time limit, and every result lands
# under $OUT as soon as it is made, so a call cut short still returns what it measured.
#
#   here, once:  bench/device_wheels.sh                 # DeepSpeed and its missing dependencies into .whl/
#   there:       bash bench/device_check.sh parity,step-off      # first call (~6 min)
#                bash bench/device_check.sh step-on,decode       # second call (~6 min)
#
# Checks:
#   parity    tests/pipeline/test_decode.py on the GPU: data.decode=gpu's pixels against the CPU path's
#   step-off  bench/bench_peak_step.py, gradient checkpointing off: largest batch, eager sweep, compiled
#   step-on   the same with gradient checkpointing on
#   decode    bench/bench_decode.py's GPU row: nvJPEG decode + resize + crop against the CPU path per core
set -uo pipefail
CHECKS=${1:-parity,step-off,step-on,decode}
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_check: installing .whl/ failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import sys, torch, torchvision, timm; print('python', sys.version.split()[0], 'torch', torch.__version__,
'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"

status=0
run() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  local started=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -i "warn" | tail -40
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [ "$rc" -eq 0 ] || status=1
}

for check in ${CHECKS//,/ }; do
  case $check in
    parity) run parity 120 python3 -m pytest --noconftest -q -p no:cacheprovider -o addopts= -rs tests/pipeline/test_decode.py ;;
    step-off) run step-off 330 python3 bench/bench_peak_step.py --checkpointing off --deadline-s 290 --out "$OUT/train_step_peak_off.json" ;;
    step-on) run step-on 330 python3 bench/bench_peak_step.py --checkpointing on --deadline-s 290 --out "$OUT/train_step_peak_on.json" ;;
    decode) run decode 150 python3 -c "import json; from bench.bench_decode import gpu_only; print(json.dumps(gpu_only(), indent=2))" ;;
    *) echo "device_check: unknown check '$check' (parity, step-off, step-on, decode)"; exit 2 ;;
  esac
done
exit $status
