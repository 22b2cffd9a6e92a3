#!/usr/bin/env bash
# One GPU session's checks, run once on a lent single-GPU machine (no internet; its own torch/transformers):
#   1. the paper-size model (CLIP-L/336 + DINOv2-L + Qwen2.5-1.5B, random weights) trains a step in bf16 on CUDA,
#      against transformers' LLaVA at the same sizes (benchmarks/bench_model.py);
#   2. `tgg demo --train` on the GPU: the tiny world, the tiny chain (within BUDGET_S), the demo's evaluation.
# Usage: OUT=<folder> [BUDGET_S=520] [STAGES=a,b INIT=<checkpoint>] [CLIP=<folder>] [NO_BENCH=1] bash benchmarks/gpu_check.sh
# STAGES and INIT run part of the chain from a checkpoint (tgg train --chain --stages --init); CLIP is --clip (the
# chain's CLIP instead of the shipped one). A part that does not reach the chain's end returns every stage it finished
# (one archive each), to carry on elsewhere. A dry run on a CPU:
# STEPS_SCALE=N (every stage's max_steps), N_TRAIN / N_EASY (the world's sizes), PY=<python>. Results land in $OUT;
# each stage's wall time is in stage_reports.txt, the run's in chain.log (all in logs.tar.gz).
set -u
: "${OUT:?set OUT}"
BUDGET_S=${BUDGET_S:-520}
T0=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then  # packages the machine lacks (pycocotools), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
TGG=("$PY" -c 'import sys; from tinygroundinggpt.cli import main; sys.exit(main())')
W=/tmp/gpu_check/world D=/tmp/gpu_check/train
rm -rf /tmp/gpu_check && mkdir -p /tmp/gpu_check

{ date -u; nvidia-smi -L 2>/dev/null; nproc
  "$PY" -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "transformers",
transformers.__version__, "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'; } \
  >"$OUT/env.txt" 2>&1

# the demo's training world (demo.py: TRAIN_WORLD seed 7, EASY_WORLD seed 8), both halves at once
"${TGG[@]}" world --out $W --n-train ${N_TRAIN:-12000} --n-eval 0 --seed 7 --image-size 64 --quiet >"$OUT/world.log" 2>&1 &
"${TGG[@]}" world --out $W/easy --n-train ${N_EASY:-20000} --n-eval 0 --seed 8 --image-size 64 --min-objects 1 --max-objects 1 \
  --quiet >>"$OUT/world.log" 2>&1 &
if [ -z "${STEPS_SCALE:-}${NO_BENCH:-}" ]; then  # the GPU half while the CPUs write the world
  timeout 120 "$PY" benchmarks/bench_model.py --size 1.5b --device cuda --dtype bfloat16 --batch 4 --steps 5 \
    >"$OUT/bench_model.txt" 2>&1 &
fi
wait
(cd $W && sha256sum ./*.jsonl easy/*.jsonl) >"$OUT/world_digests.txt" 2>&1  # the same world as the caller's?
echo "world written at +$(( $(date +%s) - T0 )) s" >>"$OUT/world.log"

SET=()
[ -n "${STEPS_SCALE:-}" ] && SET=(--set "max_steps=$STEPS_SCALE")
[ -n "${STAGES:-}" ] && SET+=(--stages "$STAGES" --init "$INIT")
[ -n "${CLIP:-}" ] && SET+=(--clip "$CLIP")
# leave ~60 s for the evaluation and the copies
timeout $(( $(left) - 60 )) "${TGG[@]}" train --chain --preset tiny --data-root $W --out $D "${SET[@]}" >"$OUT/chain.log" 2>&1
echo "chain exit $? at +$(( $(date +%s) - T0 )) s" >>"$OUT/chain.log"
cp $D/chain_report.json "$OUT/" 2>/dev/null
for s in $D/*/train_report.json; do echo "$s"; cat "$s"; echo; done >"$OUT/stage_reports.txt" 2>/dev/null
read -r pre final < <("$PY" -c 'from tinygroundinggpt.training.recipe import chain_stages as c; print(*c(tiny=True)[-2:])')
if [ -f $D/$final/COMPLETE ]; then
  timeout $(( $(left) - 15 )) "${TGG[@]}" demo --model $D/$final --out /tmp/gpu_check/demo >"$OUT/demo.log" 2>&1
  cp /tmp/gpu_check/demo/report.json /tmp/gpu_check/demo/report.md /tmp/gpu_check/demo/predictions.png "$OUT/"
  tar -C $D --exclude 'checkpoint-*' -czf "$OUT/$final.tar.gz" "$final"
  # the stage before it too, to try variants of the last stage from it elsewhere
  tar -C $D --exclude 'checkpoint-*' -czf "$OUT/$pre.tar.gz" "$pre"
else  # the stages it finished, for the rest of the chain elsewhere (tgg train --chain --stages ... --init)
  for done in $D/*/COMPLETE; do
    [ -f "$done" ] || continue
    s=$(basename "$(dirname "$done")")
    tar -C $D --exclude 'checkpoint-*' -czf "$OUT/$s.tar.gz" "$s"
  done
fi
echo "done at +$(( $(date +%s) - T0 )) s" >>"$OUT/chain.log"
# at most 8 files come back: the logs travel as one archive
# (a chain stopped by its time limit writes no chain_report.json: an unmatched pattern must not skip the archive)
(cd "$OUT" && shopt -s nullglob && logs=(./*.txt ./*.log ./*.json) && tar -czf logs.tar.gz "${logs[@]}" && rm -f ./*.txt ./*.log)
