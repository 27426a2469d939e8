#!/bin/bash
# ATOMICA-Ligand fine-tuning (ATOMICA's scripts/train_atomica_ligand.sh) on atomica-ray.
# The port: `torchrun train.py` -> `atomica-ray train`, `--gpu 0` -> `--num-workers 1 --use-gpu`;
# every other flag is ATOMICA's own. `--save_dir` is the storage path (on a multi-node cluster: a shared path or
# s3://...) and `--run_name` the run name:
# launching this script again with the same name resumes the run from its latest checkpoint.
# ATOMICA's .pkl datasets are pickles: `--allow_pickle` says you trust them (or convert them once with
# `atomica-ray convert` and pass the Parquet directories instead).
# On a cluster: ray job submit --address http://HEAD:8265 --working-dir . -- bash examples/train_atomica_ligand.sh
set -euo pipefail

atomica-ray train \
    --train_set datasets/binder_train.pkl \
    --valid_set datasets/binder_valid.pkl \
    --allow_pickle \
    --task binary_classifier \
    --num-workers 1 --use-gpu \
    --num_workers 8 \
    --lr 1e-4 \
    --max_epoch 50 \
    --shuffle \
    --atom_hidden_size 32 \
    --block_hidden_size 32 \
    --n_layers 4 \
    --edge_size 32 \
    --k_neighbors 8 \
    --max_n_vertex_per_gpu 1000 \
    --max_n_vertex_per_item 256 \
    --fragmentation_method PS_300 \
    --global_message_passing \
    --save_dir model_checkpoints \
    --pretrain_weights path/to/pretrained/ATOMICA/weights \
    --pretrain_config path/to/pretrained/ATOMICA/config \
    --run_name ATOMICA-Ligand
