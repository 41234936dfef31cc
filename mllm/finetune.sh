#!/usr/bin/env bash
# Stage 2 of LLaVA-1.5 with an FG-CLIP tower: instruction tuning on llava_v1_5_mix665k, starting
# from the stage-1 output. Published settings: lr 2e-5, global batch 128, 1 epoch, cosine with
# 3% warm-up, no weight decay, bf16, ZeRO-3, Vicuna v1 prompts, batches grouped by modality.
# LORA=1 trains LoRA adapters (r 128, alpha 256, dropout 0.05) on the language model's linear
# layers, the projector fully at 2e-5; LLaVA-1.5's LoRA script uses lr 2e-4 for the adapters.
# Merge the adapters afterwards with: python -m mllm.merge_lora --adapter OUTPUT --output MERGED
#
#   PRETRAINED=checkpoints/llava-fgclip-pretrain DATA=llava_v1_5_mix665k.json IMAGES=data \
#   OUTPUT=checkpoints/llava-fgclip NPROC=8 bash mllm/finetune.sh
#
# From LLaVA's stage-1 output instead (its mm_projector.bin), as LLaVA's finetune script starts:
#   LANGUAGE_MODEL=lmsys/vicuna-7b-v1.5 FGCLIP=checkpoints/fg-clip-large DATA=... IMAGES=... OUTPUT=... \
#   bash mllm/finetune.sh --pretrain_mm_mlp_adapter checkpoints/llava-fgclip-pretrain/mm_projector.bin
# assembles the language model, the tower and that projector into OUTPUT/base (mllm.builder) and
# trains from there. With PRETRAINED set, --pretrain_mm_mlp_adapter replaces its projector instead.
#
# CPU form (no GPU: mllm/train.py trains on the CPU, with the same bf16 and DeepSpeed stage):
#   NPROC=1 PER_DEVICE_BATCH=2 GLOBAL_BATCH=2 ... bash mllm/finetune.sh --max_steps 2
# Extra arguments go to mllm/train.py.
set -euo pipefail

ADAPTER=""
TRAIN_ARGS=()
while (( $# )); do
    case "$1" in
        --pretrain_mm_mlp_adapter) ADAPTER=${2:?--pretrain_mm_mlp_adapter needs a path}; shift 2 ;;
        --pretrain_mm_mlp_adapter=*) ADAPTER=${1#*=}; shift ;;
        *) TRAIN_ARGS+=("$1"); shift ;;
    esac
done
if [[ -z "${PRETRAINED:-}" ]]; then
    if [[ -z "${ADAPTER}" ]]; then
        echo "error: mllm/finetune.sh: set PRETRAINED to the stage-1 output directory, or LANGUAGE_MODEL and FGCLIP" \
             "and pass --pretrain_mm_mlp_adapter MM_PROJECTOR_BIN" >&2
        exit 2
    fi
    : "${LANGUAGE_MODEL:?set LANGUAGE_MODEL (the causal LM) to start from --pretrain_mm_mlp_adapter}"
    : "${FGCLIP:?set FGCLIP (the FG-CLIP checkpoint) to start from --pretrain_mm_mlp_adapter}"
fi
: "${DATA:?set DATA to the llava_v1_5_mix665k conversation JSON}"
: "${IMAGES:?set IMAGES to the folder the records image paths are relative to}"
: "${OUTPUT:?set OUTPUT to the output directory}"
LORA=${LORA:-0}
NPROC=${NPROC:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-16}
EPOCHS=${EPOCHS:-1}
BF16=${BF16:-true}
DEEPSPEED=${DEEPSPEED-mllm/configs/zero3.json}
LORA_R=${LORA_R:-128}
LORA_ALPHA=${LORA_ALPHA:-256}
LORA_DROPOUT=${LORA_DROPOUT:-0.05}
PROJECTOR_LR=${PROJECTOR_LR:-2e-5}

SCRIPT=mllm/finetune.sh
# shellcheck source=mllm/prelude.sh
source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh"
if [[ "${LORA}" = 1 ]]; then
    LR=${LR:-2e-4}
    LORA_ARGS=(--lora true --lora_r "${LORA_R}" --lora_alpha "${LORA_ALPHA}" --lora_dropout "${LORA_DROPOUT}"
               --projector_lr "${PROJECTOR_LR}")
else
    LR=${LR:-2e-5}
    LORA_ARGS=()
fi

ADAPTER_ARGS=()
if [[ -n "${ADAPTER}" && -z "${PRETRAINED:-}" ]]; then
    # ZeRO-3 partitions weights while loading, so the model is assembled once, before the launch.
    PRETRAINED="${OUTPUT}/base"
    DTYPE=float32
    if [[ "${BF16}" = true ]]; then DTYPE=bfloat16; fi
    "${PYTHON}" -m mllm.builder --language-model "${LANGUAGE_MODEL}" --fgclip "${FGCLIP}" \
        --pretrain-mm-mlp-adapter "${ADAPTER}" --dtype "${DTYPE}" --output "${PRETRAINED}"
elif [[ -n "${ADAPTER}" ]]; then
    ADAPTER_ARGS=(--pretrain_mm_mlp_adapter "${ADAPTER}")
fi

launch \
    "${LORA_ARGS[@]}" \
    "${ADAPTER_ARGS[@]}" \
    --stage finetune \
    --model_name_or_path "${PRETRAINED}" \
    --data_path "${DATA}" \
    --image_folder "${IMAGES}" \
    --conversation_format v1 \
    --group_by_modality_length true \
    --save_steps 50000 \
    "${TRAIN_ARGS[@]}"
