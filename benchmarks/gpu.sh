#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one command: one H100 or H200, about 6-7 minutes from a fresh
# machine. `--tiny` runs the same steps on a CPU with tiny models in seconds (CI runs it, so it cannot rot).
#
#   bash benchmarks/gpu.sh            # on the GPU machine
#   bash benchmarks/gpu.sh --tiny     # anywhere: tiny models on the CPU, no wheels
#
# What it prints (each table headed by its command, device, torch/diffusers/peft versions and date):
#   1. Wan2.1-1.3B shapes: tuning with the default schedule (300 steps: seconds per 100 steps with its
#      spread, the whole run, peak memory); sampling at 81x480x832 per denoising step and per call
#      ($STEPS steps per call, extrapolated to 50 and labelled so), vchain against stock diffusers
#      (no LoRA, the LoRA file unfused, fused), and with the acceleration switches (regional compile and
#      the first-block step cache; $ATTENTION if set) on vchain and on stock diffusers; the ratios.
#   2. Wan2.1-14B shapes: tuning memory and speed with gradient checkpointing ($TUNE_14B steps).
#   3. With BIG=1 (adds the most time: a random 14B checkpoint of 38 GB is saved once, then loaded through
#      from_pretrained per row): Wan2.1-14B loaded with quantization int8, fp8 and nf4, each with group
#      offloading and VAE tiling: tuning ($TUNE_BIG steps) and sampling, seconds and peak memory
#      (benchmarks/bench_big.py).
#   4. On a machine with 2 or more GPUs: Wan2.1-1.3B sampling on one GPU, then under torchrun with
#      --parallel cfg (2 GPUs), ulysses (2, and 4 where there are 4) and ring (all GPUs): seconds per step and
#      peak memory per GPU.
#
# A GPU machine without network access that has torch, transformers, peft and accelerate but not
# diffusers or pydantic gets them as wheels in .whl/ (8.8 MB), fetched once where pip can reach PyPI, in
# the repository's root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5
#
# then copy the repository with .whl/ to the GPU machine and run `bash benchmarks/gpu.sh` there (the
# script installs the wheels it finds). Results (results.json with every repeat, results.md with the
# rows) go to $OUT, or to bench-gpu/ where OUT is unset.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-2}          # denoising steps per sampling call (per-step times extrapolate to 50)
ROUNDS=${ROUNDS:-2}        # timed, interleaved rounds after one warm-up round
TUNE_14B=${TUNE_14B:-20}   # 14B tuning steps (two loss reads: one timed interval)
TUNE_BIG=${TUNE_BIG:-4}    # tuning steps of each quantized 14B row (BIG=1)
BIG=${BIG:-}               # 1: the quantized 14B rows
ATTENTION=${ATTENTION:-}   # e.g. flash or sage, where its package travels too
results=${OUT:-bench-gpu}

if [[ "${1:-}" == "--tiny" ]]; then
    small=cpu-tiny big=cpu-tiny huge=cpu-tiny quantizations=(int8) gpus=2 parallel_preset=cpu-tiny BIG=1
    accelerate=(--compile --compile-backend eager --cache first-block)  # compile's plumbing, not inductor
    big_flags=(--gradient-checkpointing)
else
    small=wan2.1-1.3b big=wan2.1-14b huge=wan2.1-14b quantizations=(int8 fp8 nf4) parallel_preset=wan2.1-1.3b
    gpus=$(nvidia-smi -L | wc -l)
    accelerate=(--compile --cache first-block)
    big_flags=()
    if [[ -d .whl ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
if [[ -n "$ATTENTION" ]]; then
    accelerate+=(--attention-backend "$ATTENTION")
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$results"

start=$SECONDS
python3 benchmarks/bench_wan.py --preset "$small" --sampling-steps "$STEPS" --rounds "$ROUNDS" "${accelerate[@]}" \
    --out "$results/small" > "$results/small.log" 2>&1 || { tail -n 40 "$results/small.log" >&2; exit 1; }
echo "# $small done in $((SECONDS - start)) s"
python3 benchmarks/bench_wan.py --preset "$big" --skip-sampling --tune-steps "$TUNE_14B" ${big_flags[@]+"${big_flags[@]}"} \
    --out "$results/big" > "$results/big.log" 2>&1 || { tail -n 40 "$results/big.log" >&2; exit 1; }
echo "# $big done in $((SECONDS - start)) s"
echo
cat "$results/small/results.md"
echo
cat "$results/big/results.md"

if [[ -n "$BIG" ]]; then
    for q in "${quantizations[@]}"; do
        python3 benchmarks/bench_big.py --preset "$huge" --quantization "$q" --offload group --vae-tiling \
            --tune-steps "$TUNE_BIG" --out "$results/big-$q" > "$results/big-$q.log" 2>&1 \
            || { tail -n 40 "$results/big-$q.log" >&2; exit 1; }
        echo "# $huge $q done in $((SECONDS - start)) s"
        echo
        cat "$results/big-$q/results.md"
    done
fi

if (( gpus >= 2 )); then
    modes=("cfg 2")
    if [[ "${1:-}" != "--tiny" ]]; then  # on a CPU only cfg runs (gloo): context parallelism needs CUDA and NCCL
        modes+=("ulysses 2" "ring $gpus")
        if (( gpus >= 4 )); then modes+=("ulysses 4"); fi
    fi
    python3 benchmarks/bench_big.py --preset "$parallel_preset" --skip-tuning --out "$results/one-gpu" \
        > "$results/one-gpu.log" 2>&1 || { tail -n 40 "$results/one-gpu.log" >&2; exit 1; }
    echo
    cat "$results/one-gpu/results.md"
    for mode in "${modes[@]}"; do
        read -r name n <<< "$mode"
        torchrun --standalone --nproc_per_node "$n" benchmarks/bench_big.py --preset "$parallel_preset" \
            --parallel "$name" --out "$results/parallel-$name-$n" > "$results/parallel-$name-$n.log" 2>&1 \
            || { tail -n 40 "$results/parallel-$name-$n.log" >&2; exit 1; }
        echo "# --parallel $name on $n done in $((SECONDS - start)) s"
        echo
        cat "$results/parallel-$name-$n/results.md"
    done
fi
