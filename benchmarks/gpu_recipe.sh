#!/usr/bin/env bash
# The GPU measurements for the FFHQ recipe (docs/corpus.md, "Real generators: recipe and cost"), in one run sized
# for a lent device (about 11-13 minutes on an H200; every step bounded). Results go to $OUT (default ./gpu-recipe):
#   corpus-<R>.log      corpus samples/s of a StyleGAN2 of size R (random weights: same network, same cost),
#                       stored at 256², no detector (synthesis + writer), 1 process and 8 processes on the GPU
#   landmarks.json      the MediaPipe detector's CPU cost per image on faces (noise images skip its landmark
#                       model, so the random-network corpus above cannot measure it)
#   read.log            Corpus.batch vs per-sample reading to cuda at batch 32 / 256
#   train256.json       DFR and RigNet steps/s at 256², batch 256, --lr-scaling sqrt, fp32 and bf16 networks
#                       (benchmarks/train.py)
#   train256-compile.json  the same, bf16 with torch.compile (first_step_s: the compilation)
#   preflight1024.json  the whole chain on random:1024 on the GPU, peak memory
#   generator.json      RigNet-free synthesis latency (fp16 + CUDA graph, batch 1) at 1024²
#   server512.json      rig -> socket -> pixels frames/s at 512²
#   photofits.json      photometric fits (train dfr --fits photometric) s/face at batch 1024, 64², and the 60k table
# Run from the repository root with a CUDA build of torch installed: bash benchmarks/gpu_recipe.sh
set -uo pipefail
OUT=${OUT:-gpu-recipe}
mkdir -p "$OUT"
py=${PYTHON:-python}
$py -m pip install -q -e ".[landmarks]" scikit-image 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
for r in 256 1024; do
  timeout 120 $py -m stylerig_engine corpus --generator random:$r --count 2048 --size 256 --batch 64 \
      --landmarks none --quiet --out /tmp/gpu-c$r 2>&1 | tail -2 > "$OUT/corpus-$r.log"
  timeout 120 torchrun --nproc_per_node 8 -m stylerig_engine corpus --generator random:$r --count 4096 --size 256 \
      --batch 64 --landmarks none --quiet --out /tmp/gpu-c$r-x8 2>&1 | tail -2 > "$OUT/corpus-$r-x8.log"
done
timeout 120 $py benchmarks/landmarks.py --count 64 --threads 1 --json "$OUT/landmarks.json" > /dev/null 2>&1
timeout 60 $py benchmarks/corpus_read.py --corpus /tmp/gpu-c256 --device cuda --batch 32 256 > "$OUT/read.log" 2>&1
timeout 180 $py benchmarks/train.py --devices cuda --size 256 --batch 256 --steps 10 --precisions fp32 bf16 \
    --lr-scaling sqrt --json "$OUT/train256.json" > "$OUT/train256.log" 2>&1
# torch.compile apart, so that a slow compilation cannot take the rows above with it
timeout 150 $py benchmarks/train.py --devices cuda --size 256 --batch 256 --steps 10 --precisions bf16 --compile on \
    --lr-scaling sqrt --json "$OUT/train256-compile.json" > "$OUT/train256-compile.log" 2>&1
timeout 150 $py benchmarks/preflight.py --generator random:1024 --device cuda --count 64 --batch 32 --steps 5 \
    --out /tmp/gpu-pf1024 --json "$OUT/preflight1024.json" > "$OUT/preflight1024.log" 2>&1
timeout 90 $py benchmarks/generator.py --device cuda --res 1024 --json "$OUT/generator.json" > "$OUT/generator.log" 2>&1
timeout 90 $py benchmarks/server.py --generator random --sizes 512 --device cuda --json "$OUT/server512.json" \
    > "$OUT/server512.log" 2>&1
timeout 90 $py benchmarks/photometric_fits.py --device cuda --count 1024 --batch 1024 --json "$OUT/photofits.json" \
    > "$OUT/photofits.log" 2>&1
ls -l "$OUT"
