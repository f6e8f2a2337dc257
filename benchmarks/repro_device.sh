#!/usr/bin/env bash
# The missing runs of docs/results.md on a 16-core machine with one GPU, in about 8 minutes.
# Run from the repository root (branch h-results): bash benchmarks/repro_device.sh (writes under $OUT)
# Needs: python3 with torch (CUDA build), numpy; tomli only on Python < 3.11; tqdm is imported
# by the sweep module. Missing pure-Python ones are installed from vendor/ (tqdm, tomli wheels).
# Data: ../shared/data (MNIST/, FashionMNIST/, ptb/) relative to the repository root.
# Output: $OUT/runs17.tar.gz (config.json, summary.json, metrics.jsonl, sanity*, rounds.jsonl
# of every finished run; refreshed every 30 s, so a run cut off by the time limit still leaves
# the finished ones), $OUT/cpu.log, $OUT/gpu.log, $OUT/env.txt.
# Queues (each most important first; a run is skipped once finished, so rerunning continues):
#   CPU, 11 workers x 1 thread: IMP lottery runs, full-scale MNIST LeNet-300-100 claims
#     (static, set, rigl, rigl_erk, gmp, dense; 5 seeds; 90/95/98 %), the other lottery runs
#     (with sanity checks), the Fashion-MNIST LeNet-5 learning-rate search (validation split), RigL 5x;
#   GPU, 5 workers: PTB LSTM (1 epoch, 3 seeds; dense + 5 methods at 75/90 %), then the same
#     lottery, Fashion and RigL 5x runs as the CPU queue (a shared claims folder gives each run
#     to one queue).
set -u
OUT=${OUT:?set OUT}
LIMIT=${LIMIT:-450}          # seconds for the queues (killed then); the script ends a few seconds later
DATA=$(cd .. && pwd)/shared/data
RUNS=/tmp/r17; MIRROR=/tmp/m17; CLAIMS=/tmp/c17
export PYTHONUNBUFFERED=1
PY=python3
{ date -u; $PY -V; nproc --all; nvidia-smi -L 2>&1 | head -2; } > $OUT/env.txt 2>&1
export PYTHONPATH=src
for m in torch numpy tqdm; do
  $PY -c "import $m" 2>/dev/null || { echo "installing $m from vendor/" >> $OUT/env.txt;
    $PY -m pip install -q --no-index --find-links vendor --target /tmp/site $m >> $OUT/env.txt 2>&1; export PYTHONPATH=src:/tmp/site; }
done
$PY -c "import sys; sys.exit(sys.version_info < (3, 11))" || $PY -c "import tomli" 2>/dev/null || {
  $PY -m pip install -q --no-index --find-links vendor --target /tmp/site tomli >> $OUT/env.txt 2>&1; export PYTHONPATH=src:/tmp/site; }
$PY -c "import torch, numpy, tqdm, sparsetrain; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >> $OUT/env.txt 2>&1 || { cat $OUT/env.txt; echo "imports failed"; exit 1; }
if [ ! -d "$DATA/MNIST" ] || [ ! -d "$DATA/FashionMNIST" ] || [ ! -d "$DATA/ptb" ]; then
  echo "error: datasets missing under $DATA (need MNIST/, FashionMNIST/, ptb/)" | tee -a $OUT/env.txt; exit 2; fi
cat $OUT/env.txt
mkdir -p $RUNS $MIRROR $CLAIMS
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
DRV="$PY benchmarks/repro_runs.py --out $RUNS --mirror $MIRROR --claims $CLAIMS --data-dir $DATA"
pack() { tar czf $OUT/.runs17.tmp -C $MIRROR . 2>/dev/null && mv -f $OUT/.runs17.tmp $OUT/runs17.tar.gz; }
( while true; do sleep 30; pack; done ) & PACKER=$!
# CPU queue
timeout -k 5 $((LIMIT - SECONDS)) $DRV --device cpu --jobs ${CPUJOBS:-11} \
  --blocks lottery_imp,core_full,lottery_rest,fashion_lr,rigl5x > $OUT/cpu.log 2>&1 & CPUQ=$!
# GPU queue: a short CUDA check of the PTB path first
if $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && \
   timeout 120 $PY benchmarks/repro_runs.py --out /tmp/smoke17 --data-dir $DATA --device cuda --blocks ptb \
     --steps 20 --limit 1 > $OUT/gpu.log 2>&1; then
  echo "GPU check passed" >> $OUT/gpu.log
  timeout -k 5 $((LIMIT - SECONDS)) $DRV --device cuda --jobs ${GPUJOBS:-5} --ptb-scale 0.25 \
    --blocks ptb,lottery_rest,fashion_lr,rigl5x >> $OUT/gpu.log 2>&1 & GPUQ=$!
else
  echo "GPU check failed: PTB on 3 CPU workers at a tenth of an epoch instead" >> $OUT/gpu.log
  timeout -k 5 $((LIMIT - SECONDS)) $DRV --device cpu --jobs ${PTBJOBS:-3} --ptb-scale 0.025 \
    --blocks ptb >> $OUT/gpu.log 2>&1 & GPUQ=$!
fi
wait $CPUQ; wait $GPUQ
kill $PACKER 2>/dev/null; pack
tail -n 3 $OUT/cpu.log $OUT/gpu.log
ls -la $OUT
