#!/usr/bin/env bash
# The GPU figures of issue 15 §5, on a machine with one CUDA GPU whose Python already has
# torch and jax built for CUDA: gradlab runs from this checkout (PYTHONPATH), nothing is
# installed. Writes, under OUT_DIR: gpu-agreement.txt (each GPU engine's gradient against
# the float64 hand gradient on the CPU), expert-gpu.txt (benchmarks/expert_baselines.py on
# the GPU) and profile-*.txt (where a short fit's fixed cost goes).
#   bash benchmarks/gpu.sh OUT_DIR
set -u
out=${1:?an output folder}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import sys, numpy, torch, jax; print(sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'jax', jax.__version__, jax.devices())"
timeout 250 python3 benchmarks/expert_baselines.py --device gpu --threads default \
  --sizes 100,10000,1000000,10000000 --repeats 3 2>&1 | tee "$out/expert-gpu.txt"
for engine in jax:gpu; do
  timeout 30 python3 benchmarks/fit_profile.py --engine "${engine%%:*}" --device "${engine##*:}" \
    --fits 100 --top 30 >"$out/profile-${engine%%:*}.txt" 2>&1
  head -n 1 "$out/profile-${engine%%:*}.txt"
done
timeout 70 python3 benchmarks/agreement_survey.py --device gpu --trials 5 >"$out/gpu-agreement.txt" 2>&1
tail -n 40 "$out/gpu-agreement.txt"
