#!/usr/bin/env bash
# Stage 1 of LLaVA-1.5 with an FG-CLIP tower: train the mlp2x_gelu projector only on LCS-558K.
# Published settings: lr 1e-3, global batch 256, 1 epoch, cosine with 3% warm-up, no weight
# decay, bf16, ZeRO-2, model_max_length 2048, plain prompt format.
#
#   LANGUAGE_MODEL=lmsys/vicuna-7b-v1.5 FGCLIP=qihoo360/fg-clip-large \
#   DATA=LLaVA-Pretrain/blip_laion_cc_sbu_558k.json IMAGES=LLaVA-Pretrain/images \
#   OUTPUT=checkpoints/llava-fgclip-pretrain NPROC=8 bash mllm/pretrain.sh
#
# CPU form (no GPU: mllm/train.py trains on the CPU, with the same bf16 and DeepSpeed stage):
#   NPROC=1 PER_DEVICE_BATCH=2 GLOBAL_BATCH=2 ... bash mllm/pretrain.sh --max_steps 2
# Extra arguments go to mllm/train.py.
set -euo pipefail

: "${LANGUAGE_MODEL:?set LANGUAGE_MODEL to the causal LM (e.g. vicuna-7b-v1.5)}"
: "${FGCLIP:?set FGCLIP to the FG-CLIP checkpoint directory}"
: "${DATA:?set DATA to the LCS-558K conversation JSON}"
: "${IMAGES:?set IMAGES to the LCS-558K image folder}"
: "${OUTPUT:?set OUTPUT to the output directory}"
NPROC=${NPROC:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-32}
LR=${LR:-1e-3}
EPOCHS=${EPOCHS:-1}
BF16=${BF16:-true}
DEEPSPEED=${DEEPSPEED-mllm/configs/zero2.json}

SCRIPT=mllm/pretrain.sh
# shellcheck source=mllm/prelude.sh
source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh"

launch \
    --stage pretrain \
    --language_model "${LANGUAGE_MODEL}" \
    --vision_tower "${FGCLIP}" \
    --data_path "${DATA}" \
    --image_folder "${IMAGES}" \
    --conversation_format plain \
    --save_steps 24000 \
    "$@"
