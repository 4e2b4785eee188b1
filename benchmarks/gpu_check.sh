#!/usr/bin/env bash
# The one prepared command for a lent GPU machine (device tool): `bash ../shared/gpu/fetch_wheels.sh` here
# first, then run this there with carry [".whl"] and timeout_s 590 (one call: at most 600 s; the timeouts
# below add up to 560 s). Everything it prints goes to $OUT/*.log: SD 1.5 at 512 px in bf16, LoRA training
# and generation against diffusers' loops with SDPA and with xformers (images/s, peak memory, MFU), the
# FLOPs of the cost model, then the tests that touch models and training on the GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi -L | tee "$OUT/device.log"
python3 -c "import torch, diffusers, peft, accelerate; print(torch.__version__, diffusers.__version__, peft.__version__, accelerate.__version__)" \
  | tee -a "$OUT/device.log"
for attention in sdpa xformers; do
  timeout 70 python3 benchmarks/train_step.py --arch sd15 --resolution 512 --batch-size 8 --num-images 64 --steps 20 \
    --repeats 1 --precision bf16 --attention $attention 2>&1 | grep -v "kept in float32" | tee "$OUT/train_$attention.log"
  timeout 70 python3 benchmarks/generate.py --arch sd15 --resolution 512 --num-images 32 --batch-size 16 --steps 30 \
    --repeats 1 --precision bf16 --attention $attention 2>&1 | grep -v "kept in float32" | tee "$OUT/generate_$attention.log"
done
timeout 40 python3 benchmarks/scaling.py --flops 2>&1 | tee "$OUT/flops.log"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/models tests/test_lora_chain.py tests/test_train.py \
  tests/test_train_resume.py tests/test_accelerate_configs.py 2>&1 | tail -30 | tee "$OUT/tests.log"
