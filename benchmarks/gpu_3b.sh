#!/usr/bin/env bash
# GPU figures at Qwen2.5-VL-3B shape (random bf16 weights, no download): one GRPO step with LoRA and QLoRA
# (bench_grpo_step.py --preset 3b) at two shapes, and generate_group vs model.generate throughput
# (bench_generation.py). JSON results go to $OUT (default: ./gpu_3b_out).
#
#   bash benchmarks/gpu_3b.sh                 # in a venv made by `SYSTEM_TORCH=1 make setup` on a CUDA machine
#   PYTHONPATH=... bash benchmarks/gpu_3b.sh  # or in an image that already has torch, with the others on PYTHONPATH
#
# Each part has its own time limit (seconds, PART_LIMIT) so one slow part cannot eat the others.
set -uo pipefail
OUT=${OUT:-gpu_3b_out}
PY=${PY:-python3}
LIMIT=${PART_LIMIT:-200}
TMP=${TMPDIR:-/tmp}/lit3drft_bench_grpo
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY - <<'EOF' | tee -a "$OUT/gpu.txt"
import bitsandbytes, lightning, peft, torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "bitsandbytes", bitsandbytes.__version__, "lightning", lightning.__version__, "cuda", torch.cuda.is_available())
EOF
part() {  # name, then the command
  local name=$1; shift
  echo "== $name: $*"
  local t=$SECONDS
  timeout "$LIMIT" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -i "warn" | tail -20
  echo "== $name: exit ${PIPESTATUS[0]} in $((SECONDS - t)) s"
}
# 1. the issue-8 shape (2 prompts x 4 frames 112 px, G=8, 64 new tokens), LoRA and QLoRA, beta 0.04 (KL: reference pass)
part grpo_small $PY benchmarks/bench_grpo_step.py --preset 3b --device cuda --tmp "$TMP" --steps 4 --warmup 1 --betas 0.04 \
  --json "$OUT/grpo_small.json"
# 2. nearer the paper's: 2 prompts x 8 frames 448 px, G=8, 256 new tokens, beta 0.04 (KL: reference pass)
part grpo_large $PY benchmarks/bench_grpo_step.py --preset 3b --device cuda --tmp "$TMP" --steps 2 --warmup 1 \
  --frames 8 --size 448 --new-tokens 256 --betas 0.04 --json "$OUT/grpo_large.json"
# 3. sampling throughput: generate_group (vision + prefill once per prompt) vs model.generate on G copies
part generation $PY benchmarks/bench_generation.py --pretrained "$TMP/qwen2_5_vl_3b_random" --device cuda \
  --frames 8 --size 448 --new-tokens 256 --repeats 2
