#!/usr/bin/env bash
# Train the plug-and-play restorer's denoiser on a GPU lent by the device tool, within its limits, and bring the weights back.
#
#   bash scripts/gpu_train.sh pack                 # here: the train split (+ 40 val images) as runs/gpu/pack.npz (≈ 45 MB, never committed)
#   bash scripts/gpu_train.sh train [MINUTES]      # there (or here, to test it): train ≤ MINUTES (default 9) on CUDA when present,
#                                                  # from the shipped denoiser; writes $OUT/denoiser.safetensors, .json and train.log
#
# With the device tool: run `pack` here, then run `bash scripts/gpu_train.sh train 9` there with carry ["runs/gpu"];
# the weights come back under the reply's files folder. Keep them only if they beat the shipped ones:
#   python -m benchmarks.pnp --part denoiser tune --denoiser FILES/denoiser.safetensors --out /tmp/gpu-check
# A test on the CPU with a tiny budget: OUT=/tmp/gpu-test bash scripts/gpu_train.sh train 0.2 (PACK=FILE: another pack)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
case "${1:-}" in
    pack)
        mkdir -p runs/gpu
        "$PY" scripts/train_denoiser.py --write-pack runs/gpu/pack.npz
        ;;
    train)
        minutes="${2:-9}"
        out="${OUT:-runs/gpu/out}"
        mkdir -p "$out"
        pack="${PACK:-runs/gpu/pack.npz}"
        [ -f "$pack" ] || { echo "$pack is missing: run 'bash scripts/gpu_train.sh pack' first (and carry runs/gpu)" >&2; exit 2; }
        device="$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
        init=()
        [ -f src/meddeblur/weights/denoiser.safetensors ] && init=(--init src/meddeblur/weights/denoiser.safetensors)
        batch=16
        [ "$device" = cuda ] && batch=64  # the GPU's throughput; on the CPU the training default
        rm -f "$out/denoiser.safetensors" "$out/denoiser.json"
        PYTHONPATH=src "$PY" scripts/train_denoiser.py --pack "$pack" --out "$out/denoiser.safetensors" --device "$device" \
            --batch "$batch" --max-minutes "$minutes" --log-every "${LOG_EVERY:-200}" "${init[@]}" 2>&1 | tee "$out/train.log"
        ;;
    *)
        echo "usage: bash scripts/gpu_train.sh pack | train [MINUTES]" >&2
        exit 2
        ;;
esac
