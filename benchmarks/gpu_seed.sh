#!/usr/bin/env bash
# Train the three `seed` recipes (the notebook, full-width ResNet-18, 50 epochs) on one GPU, all at once,
# and write their run directories, logs and a results table under $OUT.
#
# Prepare here (the dataset travels packed: 57 MB instead of 60,000 files):
#   echo /.gpu/ >> .git/info/exclude
#   python benchmarks/pack_cifar10.py pack ../shared/data/cifar10-jpeg .gpu/cifar10-jpeg.npz
# Run on the lent GPU machine (device tool: carry [".gpu"], timeout 600):
#   bash benchmarks/gpu_seed.sh
# Test the whole script here on CPU (a minute):
#   OUT=/tmp/gpu-test PRESET=smoke SSL_ZOO_DATA=../shared/data/cifar10-jpeg bash benchmarks/gpu_seed.sh
#
# Rerunning it continues unfinished runs (--resume) and leaves finished ones as they are.
# Needs no install: the GPU machine's own python3 ($PYTHON) with torch runs the code from this checkout.
set -euo pipefail
: "${OUT:?set OUT to the folder for run directories and results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)   # absolute: the script runs from the repository root
cd "$(dirname "$0")/.."
PRESET=${PRESET:-seed}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}   # stop the trainings before the device call's 10-minute limit; a rerun continues them
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 SSL_ZOO_CACHE=${SSL_ZOO_CACHE:-/tmp/ssl-zoo-cache}
if [ -z "${SSL_ZOO_DATA:-}" ]; then
  "$PYTHON" benchmarks/pack_cifar10.py unpack .gpu/cifar10-jpeg.npz /tmp/cifar10-jpeg
  export SSL_ZOO_DATA=/tmp/cifar10-jpeg
fi
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/environment.txt"
import torch, zoo
zoo.load_cifar10("train"); zoo.load_cifar10("test")  # decode once into the shared cache
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
PY
start=$(date +%s)
methods=(simclr byol barlowtwins)
pids=()
for method in "${methods[@]}"; do
  run="$OUT/$method-$PRESET"
  resume=()
  [ -f "$run/train_config.json" ] && resume=(--resume)   # a started run: continue it (a finished one: nothing to do)
  timeout --signal=KILL "$BUDGET_S" "$PYTHON" -m training train "$method" --preset "$PRESET" --out "$run" \
    "${resume[@]}" >> "$OUT/$method.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!methods[@]}"; do
  code=0
  wait "${pids[$i]}" || code=$?
  case $code in
    0) ;;
    137) echo "${methods[$i]}: stopped at the ${BUDGET_S} s budget; rerun the script to continue it" ;;
    *) echo "${methods[$i]}: failed (exit $code), see $OUT/${methods[$i]}.log"; status=1 ;;
  esac
done
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/environment.txt"
"$PYTHON" - "$OUT" "$PRESET" <<'PY' | tee "$OUT/results.md"
import json, sys
from pathlib import Path
out, preset = Path(sys.argv[1]), sys.argv[2]
print("| method | epochs done | k-NN k=5 % | weighted k-NN k=200 % | linear % | wall min |")
print("|---|---|---|---|---|---|")
for method in ("simclr", "byol", "barlowtwins"):
    run = out / f"{method}-{preset}"
    epochs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
    res = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    total = json.loads((run / "train_config.json").read_text())["epochs"] if (run / "train_config.json").exists() else "-"
    cells = [f"{100 * res[k]:.2f}" if k in res else "-" for k in ("knn5", "knn200", "linear")]
    wall = sum(e.get("seconds", 0) for e in epochs) / 60
    print(f"| {method} | {len(epochs)}/{total} | {' | '.join(cells)} | {wall:.1f} |")
PY
# The device tool brings back at most 8 files of 16 MiB: pack the small records of every run into one archive
# (full-width weights are 45 MB in fp32: shipping them needs a Hub upload or fp16 shards, not done here).
shopt -s nullglob   # a run that failed before creating its directory leaves only its log
(cd "$OUT" && tar -czf runs.tgz --exclude=checkpoint.safetensors --exclude=model.safetensors \
  ./*-"$PRESET" ./*.log)
exit $status
