"""`atomica-ray embed`: named ATOMICA representations of every item of a dataset, on a Ray Data pipeline.

    atomica-ray embed --checkpoint runs/ligand --data_path data/ --output_path emb.parquet \\
        --representations h_block,h_graph,z_graph --pool mean_std_global
    atomica-ray embed --model_config config.json --model_weights weights.pt --data_path data/ --output_path emb/
    atomica-ray embed --model_config config.json --model_weights weights.pt --describe

Names (atomica_ray/representations.py; `--describe` prints them with their widths): h_atom, h_block, h_graph,
h_interface, z_atom, z_block, z_graph, z_interface; the older graph_embedding, block_embedding, atom_embedding
(and unit_repr, block_repr, graph_repr, ...) still work and keep their column names. Columns: id, block_id
(block types), atom_id (atom types), one per name. Vectors are each item's own, whatever its batch (ATOMICA at
batch size 1 for ATOMICA checkpoints). A ProteinInterfaceModel embeds the protein (segment 0) alone.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from atomica_ray.inference.pipeline import add_arguments as common

    common(parser, "a .parquet file, or a directory of Parquet parts (resumable either way)")
    reps = parser.add_argument_group("representations")
    reps.add_argument("--representations", default="h_block,h_graph",
                      help="comma-separated names (default h_block,h_graph); see --describe")
    reps.add_argument("--pool", choices=("mean_std_global", "mean_component_normalized"), default=None,
                      help="pooling of z_graph / z_interface (required for them, no default): mean_std_global to "
                           "train a head on the vectors, mean_component_normalized to compare them")
    reps.add_argument("--segment", type=int, default=None,
                      help="the molecule of h_interface / z_interface: 0 (receptor) or 1 (ligand or partner)")
    reps.add_argument("--describe", action="store_true",
                      help="print what each name is and its width for the given model, then exit")


def run(args) -> int:
    from atomica_ray.inference.pipeline import run_command

    return run_command("embed", args, lambda: embed(args), check_usage=not args.describe)  # --describe: no model


def embed(args) -> int:
    from atomica_ray import representations as R
    from atomica_ray.inference.pipeline import execute

    if args.describe:
        return describe(args)
    columns = R.parse(args.representations)
    names = [name for _, name in columns]
    R.check_options(names, args.pool, args.segment)
    interface = any(R.REPRESENTATIONS[n].needs_segment for n in names)
    segment = args.segment if interface else None

    def check(dataset, model_config):
        if model_config.get("model_type") == "ProteinInterfaceModel" and segment not in (None, 0):
            raise ValueError(f"--segment {segment}: a ProteinInterfaceModel embeds the protein (segment 0) "
                             "alone")
        if segment is not None and model_config.get("model_type") != "ProteinInterfaceModel":
            blocks = dataset.index["n_blocks0"] if segment == 0 else \
                dataset.index["n_blocks"] - dataset.index["n_blocks0"]
            if (blocks == 0).any():
                i = int((blocks == 0).nonzero()[0][0])
                raise ValueError(f"{dataset.path}, item {i} (id {dataset[i]['id']!r}), field segment_ids: no "
                                 f"block in segment {segment}, which --segment asks to pool")

    return execute(args, "embed", {"columns": columns, "pool": args.pool, "segment": segment}, check=check,
                   verb="embedded")


def describe(args) -> int:
    from atomica_ray import representations as R

    if not (args.checkpoint or args.model_config or args.model_weights):
        print(R.describe())
        print("\n(no model given: --checkpoint or --model_config/--model_weights for the widths)")
        return 0
    from atomica_ray.inference import checkpoints

    files = checkpoints.resolve(args.checkpoint, args.model_config, args.model_weights, args.which)
    model = checkpoints.load_model(files, checkpoints.pick_device("cpu"))
    print(f"model: {files.chosen or files.config}")
    print(R.describe(model))
    return 0
