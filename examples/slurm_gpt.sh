#!/usr/bin/env bash
# SLURM launch of any GPT script in examples/ on many nodes (one srun task per node, torchrun inside).
#
#   MODEL=gpt_7b DATA_PATH=/data/corpus_text_document TOKENIZER_MODEL=/data/tokenizer.model \
#   CHECKPOINT_DIR=/ckpt/gpt_7b TP=8 CP=8 SEQ_LENGTH=262144 sbatch --nodes 8 examples/slurm_gpt.sh
#
# What it trains: the model of examples/$MODEL.sh (gpt_345m, gpt_1.3b, gpt_7b or gpt_70b) with its flags;
#   every variable that script reads (TP, CP, PP, VPP, CP_COMM_TYPE, HCP, SEQ_LENGTH, MICRO_BATCH, GLOBAL_BATCH,
#   DATA_PATH, TOKENIZER_*, CHECKPOINT_DIR, EXTRA_ARGS) passes through the environment.
# Layout: world = nodes x GPUS_PER_NODE = PP x DP x CP x TP; keep TP inside a node (TP <= GPUS_PER_NODE),
#   CP across nodes (ring P2P and all-to-all traffic, see BENCHMARKS.md for volumes).
# Memory: as in the chosen script's header (per GPU, set by TP and CP, not by the node count).
# Rendezvous: torchrun's c10d rendezvous on the first node of the allocation; SIGTERM
#   (scancel, time limit with --signal) makes the loop save a checkpoint and exit (--exit-signal-handler).
#SBATCH --job-name=megatron_sp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --signal=TERM@300
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
MODEL=${MODEL:-gpt_345m}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
mkdir -p logs
export MASTER_ADDR MASTER_PORT NPROC_PER_NODE=$GPUS_PER_NODE NNODES=$SLURM_JOB_NUM_NODES RUN_ID=$SLURM_JOB_ID
# each node's task runs the model script, whose torchrun joins the rendezvous at $MASTER_ADDR
srun --kill-on-bad-exit=1 bash -c "NODE_RANK=\$SLURM_NODEID exec bash examples/$MODEL.sh"
