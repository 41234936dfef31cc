# Shared by mllm/pretrain.sh and mllm/finetune.sh (sourced after they set their defaults):
# checks NPROC, GLOBAL_BATCH and PER_DEVICE_BATCH, sets ROOT, PYTHONPATH, PYTHON,
# ACCUMULATION (global batch / (processes x per-device batch)) and DEEPSPEED_ARGS, and defines
# `launch`. SCRIPT names the sourcing script in error lines.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
PYTHON=${PYTHON:-python}
# Checked before any arithmetic: bash evaluates a variable's text inside (( )), so a value such as
# 'HOME[$(cmd)]' would run cmd.
for name in NPROC GLOBAL_BATCH PER_DEVICE_BATCH; do
    if [[ ! "${!name}" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: ${SCRIPT}: ${name} must be a positive integer, got '${!name}'" >&2
        exit 2
    fi
done
if (( GLOBAL_BATCH % (NPROC * PER_DEVICE_BATCH) )); then
    echo "error: ${SCRIPT}: GLOBAL_BATCH=${GLOBAL_BATCH} is not a multiple of NPROC*PER_DEVICE_BATCH=$((NPROC * PER_DEVICE_BATCH))" >&2
    exit 2
fi
ACCUMULATION=$(( GLOBAL_BATCH / (NPROC * PER_DEVICE_BATCH) ))
DEEPSPEED_ARGS=()
if [[ -n "${DEEPSPEED}" ]]; then
    [[ "${DEEPSPEED}" = /* ]] || DEEPSPEED="${ROOT}/${DEEPSPEED}"
    DEEPSPEED_ARGS=(--deepspeed "${DEEPSPEED}")
fi

# launch ARGS...: mllm/train.py under torchrun with the settings both LLaVA-1.5 stages share (no weight
# decay, cosine with 3% warm-up, 2048 tokens, activation checkpointing, one kept checkpoint); ARGS are
# the stage's own arguments followed by the caller's, which win when they repeat one.
launch() {
    "${PYTHON}" -m torch.distributed.run --standalone --nproc_per_node "${NPROC}" -m mllm.train \
        "${DEEPSPEED_ARGS[@]}" \
        --output_dir "${OUTPUT}" \
        --bf16 "${BF16}" \
        --num_train_epochs "${EPOCHS}" \
        --per_device_train_batch_size "${PER_DEVICE_BATCH}" \
        --gradient_accumulation_steps "${ACCUMULATION}" \
        --learning_rate "${LR}" \
        --weight_decay 0.0 \
        --warmup_steps 0.03 \
        --lr_scheduler_type cosine \
        --model_max_length 2048 \
        --activation_checkpointing true \
        --dataloader_num_workers 4 \
        --save_strategy steps \
        --save_total_limit 1 \
        --logging_steps 1 \
        --report_to none \
        "$@"
}
