#!/usr/bin/env bash
# The GPU checks in one go (a lent GPU machine; CI has none): the CUDA tests, the speed
# table on CUDA (eager and replayed from CUDA graphs) and one learning run on the GPU.
#   bash bench/gpu_check.sh [OUT_DIR]      # logs and JSON land in OUT_DIR (default gpu-out/)
set -u
out="${1:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
py="${PYTHON:-python3}"
nvidia-smi -L | tee "$out/device.txt"
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$out/device.txt"
echo "== tests/test_cuda.py"
timeout 240 "$py" -m pytest -p no:cacheprovider -q -rs tests/test_cuda.py 2>&1 \
    | tee "$out/test_cuda.log" | tail -25
echo "== bench/speed.py --device cuda"
timeout 300 "$py" bench/speed.py --device cuda --repeats 5 --json-out "$out/speed_cuda.json" 2>&1 \
    | tee "$out/speed_cuda.log"
echo "== dni-b on Add(5,9), 100k steps, 5 seeds, on the GPU from CUDA graphs"
timeout 180 "$py" -m simulator run --task add --task-arg t1=5 --task-arg t2=9 --rule dni-b \
    --steps 100000 --test-steps 5000 --seeds 0-4 --device cuda --cuda-graph --json \
    --no-progress 2>&1 | tee "$out/learn_dni_b_cuda.log" | tail -3
