#!/usr/bin/env bash
# One lent-GPU session, as one script (the device time is short and a machine's start is costly): the GPU
# measurements a GPU session owes the README, and the two embedded models (models/synthetic128/) trained.
#   1. Barbershop's batching speed-up at config F, 256 / 512 / 1024 px, B = 1, 4, 16, with the GPU alone.
#   2. The embedded generator (experiment=stylegan2_synthetic128) and parser (experiment=face_parsing_synthetic)
#      trained side by side, each stopped by a wall-clock budget; meanwhile HOG, the inpainting training step
#      and the DragGAN step are measured on the same GPU (so those figures share the GPU with the trainings).
# Exports are copied to $OUT as they appear, so a run cut short still returns the latest ones.
#
#   OUT=<dir> bash benchmarks/gpu_session.sh           # on the GPU machine
#   QUICK=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh   # a CPU dry run of every step at tiny sizes
set -u
OUT=${OUT:-outputs/gpu_session}
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
RUNS=${RUNS:-/tmp/facelab_gpu_runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start )) s] $*"; }

if [ "$QUICK" = 1 ]; then
  TRAINER=cpu GEN_TIME=00:00:00:40 PARSER_TIME=00:00:00:30 BENCH_TIME=60 DEADLINE=400
  BARBERSHOP=(--channel-base 1024 --sizes 64 --batches 1 2 --steps 1)
  GEN_EXTRA=(data.faces.size=32 data.faces.train_length=128 data.batch_size=8 data.eval_batch_size=8
             data.num_workers=1 trainer.val_check_interval=4 callbacks.model_checkpoint.every_n_train_steps=4
             model.loss.pl_weight=0 data.pin_memory=false)
  PARSER_EXTRA=(data.faces.size=32 data.faces.train_length=64 data.batch_size=4 data.eval_batch_size=8
                data.num_workers=1 trainer.val_check_interval=4 callbacks.model_checkpoint.every_n_train_steps=4)
  HOG=(--repeats 1) TRAIN_STEP=(--sizes 64 --batches 8 --steps 1 --repeats 1 --part-repeats 1)
  DRAG=(--quick --channel-base 2048)
else
  TRAINER=gpu GEN_TIME=00:00:05:00 PARSER_TIME=00:00:04:00 BENCH_TIME=170 DEADLINE=550
  BARBERSHOP=(--channel-base 32768 --sizes 256 512 1024 --batches 1 4 16 --steps 3)
  # stylegan2_synthetic128 is sized for the CPU (batch 16); on a GPU, --cfg=auto's batch 64 and its gamma, EMA
  GEN_EXTRA=(data.batch_size=64 data.eval_batch_size=64 data.num_workers=6 data.pin_memory=true
             model.loss.r1_gamma=0.0512 model.ema.half_life_kimg=20 float32_matmul_precision=high)
  PARSER_EXTRA=(data.num_workers=4 trainer.max_steps=4000)
  HOG=(--repeats 5) TRAIN_STEP=(--steps 3 --repeats 2)
  DRAG=(--resolutions 256 512 --batches 1 8 --repeats 3)
fi

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch, pytorch_lightning, hydra, omegaconf, lpips, skimage; print('torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'lightning', pytorch_lightning.__version__, 'hydra', hydra.__version__)" || exit 3

stamp "1. Barbershop batching at config F (GPU alone)"
timeout "$BENCH_TIME" $PY benchmarks/bench_barbershop.py "${BARBERSHOP[@]}"

stamp "2. training the shipped generator and parser (background), benchmarks beside them"
COMMON=(trainer="$TRAINER" trainer.min_epochs=0 logger=csv extras.print_config=false trainer.enable_progress_bar=false)
$PY -m facelab.cli.train experiment=stylegan2_synthetic128 "${COMMON[@]}" "+trainer.max_time=$GEN_TIME" \
  "hydra.run.dir=$RUNS/generator" "${GEN_EXTRA[@]}" >"$RUNS/generator.log" 2>&1 &
gen_pid=$!
$PY -m facelab.cli.train experiment=face_parsing_synthetic "${COMMON[@]}" "+trainer.max_time=$PARSER_TIME" \
  "hydra.run.dir=$RUNS/parser" "${PARSER_EXTRA[@]}" >"$RUNS/parser.log" 2>&1 &
parser_pid=$!

copy_exports() {  # the latest exports into $OUT (atomically: a cut-short run returns whole files)
  for pair in generator/generator.pt:generator.pt parser/parser.pth:parser.pth; do
    src=$RUNS/${pair%%:*} dst=$OUT/${pair##*:}
    [ -f "$src" ] && cp "$src" "$dst.tmp" && mv "$dst.tmp" "$dst"
  done
}
( while kill -0 $gen_pid 2>/dev/null || kill -0 $parser_pid 2>/dev/null; do sleep 20; copy_exports; done ) &

stamp "2a. HOG (CPU and GPU)"
timeout 60 $PY benchmarks/bench_hog.py "${HOG[@]}"
stamp "2b. inpainting training step"
timeout 120 $PY benchmarks/bench_train_step.py "${TRAIN_STEP[@]}"
stamp "2c. DragGAN step"
timeout 60 $PY benchmarks/bench_drag_step.py "${DRAG[@]}"

stamp "waiting for the trainings (stopped at $DEADLINE s at the latest)"
while { kill -0 $gen_pid 2>/dev/null || kill -0 $parser_pid 2>/dev/null; } \
      && [ $(( $(date +%s) - start )) -lt "$DEADLINE" ]; do
  sleep 5
done
kill $gen_pid $parser_pid 2>/dev/null
sleep 2
copy_exports
stamp "training logs (tails)"
tail -n 15 "$RUNS/generator.log" "$RUNS/parser.log"
# grids, metric CSVs and logs (not the checkpoints: the exports are what ships)
tar -czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude='*.ckpt' --exclude='*.pt' --exclude='*.pth' . 2>/dev/null
ls -la "$OUT"
stamp "done"
