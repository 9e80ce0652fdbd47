#!/usr/bin/env bash
# The device checks of a GPU session, in one command: the machine, the Triton tests natively
# on CUDA, benchmarks/gpu_long_rows.py and `softmaxlab bench --suite gpu` (or its --quick
# form), each under a time limit (SIGINT: the bench saves what it measured). Logs and JSON go
# to $OUT (default benchmarks/results/gpu-run). Peer packages (liger-kernel,
# cut-cross-entropy, entmax) are found in ./.peers when they are not installed: pure-Python
# sources, e.g. from git clones of linkedin/Liger-Kernel, apple/ml-cross-entropy and
# deep-spin/entmax: `git -C LIGER archive HEAD src/liger_kernel | tar -x -C .peers
# --strip-components=1`, `git -C CCE archive HEAD cut_cross_entropy | tar -x -C .peers`,
# `git -C ENTMAX archive HEAD entmax | tar -x -C .peers` (keep .peers out of git, e.g. in
# .git/info/exclude, and carry it to the device machine).
#
#   benchmarks/gpu_check.sh [tests] [long] [quick|bench]     (default: tests long bench)
set -u
OUT=${OUT:-benchmarks/results/gpu-run}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/.peers${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
  | tee "$OUT/env.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$OUT/env.txt"
for step in ${*:-tests long bench}; do
  start=$SECONDS
  case $step in
    tests) timeout -s INT "${T_TESTS:-240}" $PY -m pytest -q -p no:cacheprovider -n 8 \
             tests/kernels/triton >"$OUT/tests.log" 2>&1; tail -15 "$OUT/tests.log" ;;
    long) timeout -s INT "${T_LONG:-150}" $PY benchmarks/gpu_long_rows.py \
            --out "$OUT/long_rows.json" 2>&1 | tee "$OUT/long_rows.log" ;;
    quick|bench) flag=$([ "$step" = quick ] && echo --quick)
      timeout -s INT "${T_BENCH:-300}" $PY -m softmaxlab bench --suite gpu $flag \
        --out "$OUT/bench-gpu.json" >"$OUT/bench.md" 2>"$OUT/bench.log"
      echo "bench rc=$?"; tail -5 "$OUT/bench.log"; cat "$OUT/bench.md" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step: $((SECONDS - start)) s"
done
