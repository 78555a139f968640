#!/usr/bin/env bash
# Multi-node launch without a scheduler: run this on every node (same command, same variables).
#
#   # on each of 4 nodes:
#   MODEL=gpt_1.3b MASTER_ADDR=node0 NNODES=4 TP=2 CP=16 SEQ_LENGTH=262144 \
#   DATA_PATH=/data/corpus_text_document CHECKPOINT_DIR=/shared/ckpt bash examples/multinode_torchrun.sh
#
# What it trains: the model of examples/$MODEL.sh with its flags and memory needs (see its header).
# Layout: world = NNODES x NPROC_PER_NODE = PP x DP x CP x TP; TP varies fastest so a TP group stays inside a node.
# Rendezvous: torchrun c10d at $MASTER_ADDR:$MASTER_PORT with one RUN_ID for the job; nodes may start in any
#   order.  CHECKPOINT_DIR must be on storage every node sees.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MASTER_ADDR:?set MASTER_ADDR to a host every node can reach}"
: "${NNODES:?set NNODES}"
export MASTER_ADDR NNODES MASTER_PORT=${MASTER_PORT:-29500} NPROC_PER_NODE=${NPROC_PER_NODE:-8}
export RUN_ID=${RUN_ID:-megatron_sp_$(date +%Y%m%d)}
exec bash "examples/${MODEL:-gpt_345m}.sh"
