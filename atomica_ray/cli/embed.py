"""`atomica-ray embed`: ATOMICA's get_embeddings.py on atomica-ray - graph, block and atom embeddings of every item
of a dataset, written to Parquet (one row per item).

    atomica-ray embed --model_config config.json --model_weights weights.pt --data_path data/ --output_path emb.parquet
    atomica-ray embed --checkpoint runs/ligand/checkpoint_epoch0009_step00001234 --data_path ... --output_path ...

Columns: id, graph_embedding [block_hidden], block_embedding [n_blocks][block_hidden], atom_embedding
[n_atoms][atom_hidden], block_id [n_blocks] (block types, as ATOMICA names them), atom_id [n_atoms] (atom types).
A ProteinInterfaceModel embeds the protein (segment 0) alone, as ATOMICA's script does. Embeddings are computed
with the model's own behaviour flags (ATOMICA checkpoints keep ATOMICA's numerics).
"""

from __future__ import annotations

import sys
import time


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", help="an atomica-ray checkpoint dir (or a dir with config.json + weights)")
    parser.add_argument("--model_config", "--model-config", dest="model_config", help="ATOMICA config.json")
    parser.add_argument("--model_weights", "--model-weights", dest="model_weights", help="ATOMICA weights .pt")
    parser.add_argument("--data_path", "--data-path", "--data", dest="data_path", required=True,
                        help="Parquet dataset dir, or an ATOMICA .pkl / .jsonl.gz / .parquet")
    parser.add_argument("--output_path", "--output-path", "--out", dest="output_path", required=True,
                        help="Parquet file to write")
    parser.add_argument("--max_n_vertex_per_gpu", "--batch-blocks", dest="budget", type=int, default=1000,
                        help="blocks per batch (raised to the largest item)")
    parser.add_argument("--allow_pickle", "--allow-pickle", dest="allow_pickle", action="store_true",
                        help="read ATOMICA .pkl files (runs pickle: only for files you trust)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    import torch  # here, not at import: `--help` answers without torch

    from atomica_ray.train import inference as inf
    from atomica_ray.train.loop import to_device

    start = time.perf_counter()
    try:
        _, device, model, model_config = inf.model_from_args(args)
        interface = model_config["model_type"] == "ProteinInterfaceModel"
        batches = inf.ordered_batches(args.data_path, "prot_interface" if interface else "plain", args.budget,
                                      inf.fragmentation_of(model_config), args.allow_pickle)
        rows = inf.ParquetRows(args.output_path, overwrite=args.overwrite, schema=inf.EMBEDDING_SCHEMA)
        with rows as out, torch.no_grad():
            for ids, batch in batches:
                batch = to_device(batch["prot"] if interface else batch, device)
                enc = model.encode(batch)
                blocks = batch["lengths"].tolist()  # blocks per item
                atoms = torch.split(batch["block_lengths"], blocks)  # atoms per block, per item
                atom_counts = [int(a.sum()) for a in atoms]
                for i, (block_repr, unit_repr, b, a) in enumerate(zip(
                        torch.split(enc.block_repr, blocks), torch.split(enc.unit_repr, atom_counts),
                        torch.split(batch["B"], blocks), torch.split(batch["A"], atom_counts))):
                    out.add({"id": ids[i], "graph_embedding": inf.as_list(enc.graph_repr[i]),
                             "block_embedding": inf.as_list(block_repr), "atom_embedding": inf.as_list(unit_repr),
                             "block_id": b.cpu().tolist(), "atom_id": a.cpu().tolist()})
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as error:
        print(f"atomica-ray embed: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote embeddings of {out.count} items to {args.output_path} in {time.perf_counter() - start:.1f} s")
    return 0
