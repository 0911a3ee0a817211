#!/usr/bin/env bash
# Multi-GPU training with torchrun: tools/dist_train.sh {seg|cls} CONFIG GPUS [extra args]
set -euo pipefail
KIND=$1; CONFIG=$2; GPUS=${3:-1}; shift 3 || shift $#
PORT=${PORT:-29500}
torchrun --nproc_per_node="$GPUS" --master_port="$PORT" "$(dirname "$0")/train_${KIND}.py" "$CONFIG" --launcher pytorch "$@"
