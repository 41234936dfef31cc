# Shared by mllm/pretrain.sh and mllm/finetune.sh (sourced after they set their defaults):
# checks NPROC, GLOBAL_BATCH and PER_DEVICE_BATCH, and sets ROOT, PYTHONPATH, PYTHON,
# ACCUMULATION (global batch / (processes x per-device batch)) and DEEPSPEED_ARGS.
# SCRIPT names the sourcing script in error lines.

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
