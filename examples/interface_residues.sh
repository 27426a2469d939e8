#!/bin/bash
# Residue-level interface prediction end to end (issue 17, item 6): structures -> items -> interface labels ->
# residue_binary_classifier tuned with ASHA.
#   1. `atomica-ray process` (issue 15) turns the structures of each split's index CSV (ATOMICA's process_pdbs
#      columns: pdb_id, pdb_path, chain1, chain2) into a Parquet dataset cut at the interface (8 Å);
#   2. every non-global block is labelled 1 when one of its heavy atoms is within 4 Å of the partner segment
#      (atomica_ray/data/labels.py), else 0;
#   3. a sweep of the residue classifier over tune_spaces/residue_binary_classifier.yaml, ASHA stopping the weak
#      trials early; trials are ranked by validation AUPRC over all residues, maximised.
# Usage: bash examples/interface_residues.sh TRAIN.csv VALID.csv [OUT_DIR]
set -euo pipefail
train_csv=${1:?TRAIN.csv}
valid_csv=${2:?VALID.csv}
out=${3:-interface-residues}
mkdir -p "$out"

for split in train valid; do
    csv=$train_csv; [ "$split" = valid ] && csv=$valid_csv
    atomica-ray process "$csv" --out "$out/$split-complexes" --fragmentation_method PS_300 --overwrite
    python -m atomica_ray.data.labels "$out/$split-complexes" "$out/$split" --cutoff 4.0 --overwrite
done

cat > "$out/run.yaml" <<YAML
task: residue_binary_classifier
train_set: $out/train
valid_set: $out/valid
fragmentation_method: PS_300
max_epoch: ${MAX_EPOCH:-20}
max_n_vertex_per_gpu: 1000
max_n_vertex_per_item: 256
random_block_sampling: true
YAML

atomica-ray tune --config "$out/run.yaml" --space tune_spaces/residue_binary_classifier.yaml \
    --scheduler asha --search optuna --num-samples "${NUM_SAMPLES:-12}" \
    --storage-path "$out/sweeps" --name residues
atomica-ray report residues --storage-path "$out/sweeps"
