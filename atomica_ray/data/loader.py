"""Data -> engine: `DataSpec`, `open_dataset`, `make_loader` (docs/DESIGN.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os

import numpy as np
import torch

from atomica_ray.data.batching import EpochPlan, Step, plan_epoch
from atomica_ray.data.collate import collate
from atomica_ray.data.items import DataError, source_format
from atomica_ray.data.parquet import META_FILE, ParquetItems, convert
from atomica_ray.data.vocab import get_vocab

# dataset kind -> ATOMICA dataset class it reproduces (reference §1.3, §1.4)
KINDS = {
    "affinity": "PDBBindBenchmark",
    "labelled": "LabelledPDBDataset",
    "multiclass": "MultiClassLabelledPDBDataset",
    "residue": "LabelledPDBDataset (one 0/1 label per non-global block)",
    "multilabel": "MultiClassLabelledPDBDataset (a label vector per item)",
    "plain": "PDBDataset",
    "prot_interface": "ProtInterfaceDataset",
    "pretrain_torsion": "PretrainTorsionDataset",
    "pretrain_masked_torsion": "PretrainMaskedTorsionDataset",
    "pretrain_masked": "PretrainMaskedDataset",
    "pretrain_atom": "PretrainAtomDataset",
}
PRETRAIN_KINDS = {"pretrain_torsion", "pretrain_masked_torsion", "pretrain_masked", "pretrain_atom"}
# optional record fields each kind reads (others' columns are never decoded)
FIELDS_USED = {
    "affinity": ("block_embeddings",),
    "labelled": (),
    "multiclass": (),
    "residue": (),
    "multilabel": (),
    "plain": (),
    "prot_interface": (),
    "pretrain_torsion": ("torsion_mask", "block_embeddings"),
    "pretrain_masked_torsion": ("torsion_mask", "block_embeddings"),
    "pretrain_masked": (),
    "pretrain_atom": (),
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What to load and how to batch it. Noise fields are read by `transforms.make_transform` for the
    pretraining kinds (0 / None switches a noise off); defaults are ATOMICA's released pretraining values."""

    path: str
    kind: str = "labelled"
    max_n_vertex_per_gpu: int = 1000  # block budget of one batch (per rank)
    max_n_vertex_per_item: int | None = None  # larger items are cropped around the interface
    balance: str | None = None  # None | "label" | "modality"
    fragmentation_method: str | None = "PS_300"
    allow_pickle: bool = False
    # pretraining noise / masking
    atom_noise: float | None = None
    translation_noise: float | None = 1.0
    rotation_noise: float | None = 0.25
    max_rotation: float = 0.5
    torsion_noise: float | None = 0.5
    mask_proportion: float | None = 0.1
    num_classes: int | None = None  # multilabel: the width every label vector must have
    # random block sampling of labelled kinds (ATOMICA's --random_block_sampling; training sets only)
    random_block_sampling: bool = False
    block_sampling_p_keep: float = 1.0
    block_sampling_p_none: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"DataSpec.kind: unknown kind {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.balance not in (None, "label", "modality"):
            raise ValueError(f"DataSpec.balance: expected None, 'label' or 'modality', got {self.balance!r}")
        if self.max_n_vertex_per_gpu < 1:
            raise ValueError(f"DataSpec.max_n_vertex_per_gpu: must be positive, got {self.max_n_vertex_per_gpu}")
        if self.max_n_vertex_per_item is not None and self.max_n_vertex_per_item < 3:
            raise ValueError(
                f"DataSpec.max_n_vertex_per_item: must be at least 3 (two global blocks and one more), "
                f"got {self.max_n_vertex_per_item}"
            )

    def replace(self, **changes) -> "DataSpec":
        return dataclasses.replace(self, **changes)


# --- datasets -----------------------------------------------------------------------------------

def user_cache_dir() -> str:
    """atomica-ray's per-user cache directory (platformdirs if installed, else ~/.cache/atomica-ray)."""
    env = os.environ.get("ATOMICA_RAY_CACHE")
    if env:
        return env
    try:
        import platformdirs

        return platformdirs.user_cache_dir("atomica-ray")
    except ImportError:
        return os.path.join(os.path.expanduser("~"), ".cache", "atomica-ray")


_OPEN: dict[tuple, ParquetItems] = {}


def open_dataset(path: str, allow_pickle: bool = False, fragmentation_method: str | None = "PS_300",
                 list_labels: str = "auto") -> ParquetItems:
    """A Parquet dataset directory as is; an ATOMICA .pkl / .jsonl.gz file is converted once into the user cache
    (keyed by its path, size and modification time) and the cached copy reused afterwards."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        target = path
    elif os.path.isfile(path):
        source_format(path)  # unknown extensions fail here, before any work
        if source_format(path) == "pickle" and not allow_pickle:
            raise DataError(f"{path}: refusing to unpickle. Loading a pickle can run arbitrary code; if you trust "
                            "this file, pass --allow-pickle (CLI) or allow_pickle=True (API).")
        st = os.stat(path)
        how = "" if list_labels == "auto" else f"|{list_labels}"  # how list labels are read (items.py)
        text = f"{path}|{st.st_size}|{st.st_mtime_ns}|{fragmentation_method}{how}"
        key = hashlib.sha256(text.encode()).hexdigest()[:20]
        name = os.path.basename(path).split(".")[0]
        target = os.path.join(user_cache_dir(), "datasets", f"{name}-{key}")
        if not os.path.isfile(os.path.join(target, META_FILE)):
            try:
                convert([path], target, allow_pickle=allow_pickle, fragmentation_method=fragmentation_method,
                        list_labels=list_labels)
            except FileExistsError:
                pass  # another process converted it first
    else:
        raise DataError(f"{path}: no such file or dataset directory")
    st = os.stat(os.path.join(target, META_FILE)) if os.path.isfile(os.path.join(target, META_FILE)) else None
    key = (target, st.st_mtime_ns if st else None)
    if key not in _OPEN:
        _OPEN[key] = ParquetItems(target)
    ds = _OPEN[key]
    n_types = len(get_vocab(fragmentation_method))
    if ds.meta.get("max_block_type", -1) >= n_types:
        raise DataError(f"{target}: has block type {ds.meta['max_block_type']}, but fragmentation_method "
                        f"{fragmentation_method!r} has only {n_types} block types")
    return ds


LIST_LABELS_OF_KIND = {"residue": "block", "multilabel": "vector"}  # how an ATOMICA file's list labels are read
LIST_LABEL_KINDS = {"residue": ("n_block_labels", "block labels (one 0/1 per non-global block)"),
                    "multilabel": ("n_label_vector", "a label vector")}


def check_list_labels(ds: ParquetItems, kind: str, num_classes: int | None = None) -> None:
    """Residue and multilabel kinds: every item has its list label (the length of block labels was checked when
    the item was validated); a label vector has `num_classes` values. Reads the size index only."""
    if kind not in LIST_LABEL_KINDS:
        return
    column, what = LIST_LABEL_KINDS[kind]
    counts = ds.index[column]
    missing = np.nonzero(counts < 0)[0]
    if len(missing):
        i = int(missing[0])
        raise DataError(f"{ds.path}, item {i} (id {ds[i]['id']!r}), field label: missing; kind {kind!r} needs "
                        f"{what} on every item ({len(missing)} of {len(ds)} items lack it)")
    if kind == "multilabel" and num_classes is not None and np.any(counts != num_classes):
        i = int(np.nonzero(counts != num_classes)[0][0])
        raise DataError(f"{ds.path}, item {i} (id {ds[i]['id']!r}), field label: a label vector of {int(counts[i])} "
                        f"values, but num_classifier_classes is {num_classes}")


def item_labels(ds: ParquetItems, kind: str) -> np.ndarray | None:
    """Per-item label of a labelled kind (float64), checked present; None for kinds without labels."""
    label, affinity = ds.index["label"], ds.index["affinity"]
    if kind == "labelled":
        out, field = np.where(np.isnan(label), affinity, label), "label (or affinity.neglog_aff)"
    elif kind == "multiclass":
        out, field = label, "label"
    elif kind == "affinity":
        out, field = affinity, "affinity.neglog_aff"
    else:
        return None
    missing = np.nonzero(np.isnan(out))[0]
    if len(missing):
        i = int(missing[0])
        raise DataError(f"{ds.path}, item {i} (id {ds[i]['id']!r}), field {field}: missing, and kind {kind!r} needs "
                        f"it ({len(missing)} items lack it)")
    if kind == "multiclass" and np.any(out != np.round(out)):
        i = int(np.nonzero(out != np.round(out))[0][0])
        raise DataError(f"{ds.path}, item {i} (id {ds[i]['id']!r}), field label: {out[i]} is not a class index")
    return out


# --- per-item preparation and batches (run in DataLoader workers) --------------------------------

def segment_only(rec: dict, segment: int) -> dict:
    """The blocks and atoms of one segment (ATOMICA's `filter_for_segment`)."""
    keep_block = rec["segment_ids"] == segment
    keep_atom = np.repeat(keep_block, rec["block_lengths"])
    out = {"id": rec["id"]}
    for k in ("X", "A", "atom_positions"):
        out[k] = rec[k][keep_atom]
    for k in ("B", "block_lengths", "segment_ids"):
        out[k] = rec[k][keep_block]
    return out


class EpochBatches(torch.utils.data.Dataset):
    """Map-style dataset over one rank's planned batches: `ds[b]` reads, crops, noises and collates batch b.

    Randomness comes from rng(seed, epoch, item index) only, so any worker produces the same batch."""

    def __init__(self, items: ParquetItems, batches: list[np.ndarray], crop_to: np.ndarray, labels, spec: DataSpec,
                 seed: int, epoch: int, transform):
        self.items, self.batches, self.crop_to, self.labels = items, batches, crop_to, labels
        self.kind, self.seed, self.epoch, self.transform = spec.kind, seed, epoch, transform
        self.fields = FIELDS_USED[spec.kind]
        self.sampling = None
        if spec.random_block_sampling:
            from atomica_ray.data.transforms import SAMPLED_KINDS, BlockSampling

            if spec.kind not in SAMPLED_KINDS:
                raise ValueError(f"DataSpec.random_block_sampling: kind {spec.kind!r} is not a labelled kind "
                                 f"({sorted(SAMPLED_KINDS)})")
            self.sampling = BlockSampling(spec.block_sampling_p_keep, spec.block_sampling_p_none)

    def __len__(self) -> int:
        return len(self.batches)

    def prepare(self, rec: dict, i: int) -> dict | None:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        cap = int(self.crop_to[i])
        if cap:
            from atomica_ray.data.crop import crop_item

            rec = crop_item(rec, cap, rng)
            if len(rec["B"]) > cap:
                raise RuntimeError(f"crop_item returned {len(rec['B'])} blocks for item {rec['id']!r}, above {cap}")
        if self.sampling is not None:  # after the crop: sampling only removes blocks, the batch still fits
            rec = self.sampling(rec, rng)
        if self.labels is not None:
            rec["label"] = int(self.labels[i]) if self.kind == "multiclass" else float(self.labels[i])
        if self.kind == "residue":
            rec["item_index"] = i
        if self.kind == "prot_interface":
            rec["prot"] = segment_only(rec, 0)
        if self.transform is not None:
            rec = self.transform(rec, rng)
        return rec

    def __getitem__(self, b: int) -> dict:
        idx = self.batches[b]
        recs = self.items.get(idx, self.fields)
        ready = [r for r in (self.prepare(rec, int(i)) for rec, i in zip(recs, idx)) if r is not None]
        # Every item of the batch was dropped by the transform (e.g. cropping removed all rotatable bonds):
        # take the next usable item of this rank's epoch, so that every rank still yields this batch.
        j = b
        while not ready:
            j = (j + 1) % len(self.batches)
            if j == b:
                raise RuntimeError("no item of this rank's epoch survives the transform")
            for i in self.batches[j]:
                r = self.prepare(self.items.get([int(i)], self.fields)[0], int(i))
                if r is not None:
                    ready = [r]
                    break
        return collate(ready, self.kind)


def _identity(x):
    return x


def _worker_init(_):
    torch.set_num_threads(1)  # one decoding process per core; no intra-op thread pools fighting
    info = torch.utils.data.get_worker_info()
    if info is not None:  # a forked worker opens its own file handles rather than sharing the parent's
        info.dataset.items.reset()


class EpochLoader:
    """One rank's batches of one epoch, from a position in the epoch's batch sequence on. Iterating yields the
    batches; `steps()` groups them by optimizer step."""

    def __init__(self, batches: EpochBatches, plan: EpochPlan, steps: list[Step], rank: int, start_batch: int,
                 loader_kwargs: dict):
        self.dataset, self.plan, self.rank, self.loader_kwargs = batches, plan, rank, loader_kwargs
        self.step_plan, self.start_batch = steps, start_batch

    def __len__(self) -> int:
        """Batches this rank yields (from the start position)."""
        return len(self.dataset)

    @property
    def n_batches(self) -> int:
        """Batches of the whole epoch, over all ranks."""
        return len(self.plan.batches)

    @property
    def item_batches(self) -> list[np.ndarray]:
        """Global item indices of this rank's batches (before any transform drops)."""
        return self.dataset.batches

    def __iter__(self):
        order = range(len(self.dataset))
        if self.loader_kwargs.get("num_workers", 0) == 0:
            for b in order:
                yield self.dataset[b]
            return
        yield from torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=order, collate_fn=_identity, worker_init_fn=_worker_init,
            **self.loader_kwargs,
        )

    def steps(self):
        """Per optimizer step: (batches of the step over all ranks, an iterator over this rank's batches of it,
        possibly none). Consume each step's iterator before asking for the next step."""
        batches = iter(self)
        for step in self.step_plan:
            yield step.size, itertools.islice(batches, len(step.ranks[self.rank]))


def make_transform_for(spec: DataSpec):
    """The pretraining transform of a spec (None for kinds without noise)."""
    if spec.kind not in PRETRAIN_KINDS:
        return None
    from atomica_ray.data.transforms import make_transform

    return make_transform(spec)


def prepare_tables(spec: DataSpec) -> None:
    """Build or load the noise tables of `spec` now (the trainer calls this before its first epoch, so that no
    epoch's first batch waits for a table built on the machine's first use)."""
    transform = make_transform_for(spec)
    if transform is not None:
        transform.load_tables()


def make_loader(spec: DataSpec, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                start_batch: int = 0, per_step: int | None = None, shuffle: bool = True, num_workers: int = 0,
                pin_memory: bool = False, prefetch_factor: int | None = None,
                multiprocessing_context=None) -> EpochLoader:
    """This rank's loader for one epoch. The epoch's batches are a pure function of (dataset, spec, seed, epoch),
    whatever the world size; `start_batch` is a position in that sequence (batches all ranks consumed so far) and
    `per_step` the batches of one optimizer step over all ranks (default world_size: one per rank). So a run
    resumed at `start_batch=b` sees exactly the batches b, b+1, ... of the full run, and a run resumed there with
    another world size sees the same items (dealt differently)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"make_loader: rank {rank} outside 0..{world_size - 1}")
    items = open_dataset(spec.path, spec.allow_pickle, spec.fragmentation_method,
                         LIST_LABELS_OF_KIND.get(spec.kind, "auto"))
    labels = item_labels(items, spec.kind)
    check_list_labels(items, spec.kind, spec.num_classes)
    groups = None
    if spec.balance == "label":
        groups = labels if labels is not None else items.index["label"]
        if np.isnan(groups).any():
            raise DataError(f"{items.path}: balance='label' needs a label on every item")
    elif spec.balance == "modality":
        groups = items.index["modality"]
    try:
        plan = plan_epoch(items.index, spec.kind, spec.max_n_vertex_per_gpu, spec.max_n_vertex_per_item, seed, epoch,
                          shuffle=shuffle, balance=spec.balance, groups=groups)
    except ValueError as e:
        raise DataError(f"{items.path}: {e}") from e
    if not 0 <= start_batch <= len(plan.batches):
        raise ValueError(f"make_loader: start_batch {start_batch} outside 0..{len(plan.batches)}")
    steps = plan.steps(world_size, per_step or world_size, start_batch)
    mine = [plan.batches[j] for step in steps for j in step.ranks[rank]]
    transform = make_transform_for(spec)
    if transform is not None:
        transform.load_tables()  # here, once: workers inherit them
    batches = EpochBatches(items, mine, plan.crop_to, labels, spec, seed, epoch, transform)
    kwargs: dict = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers:
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if multiprocessing_context is not None:
            kwargs["multiprocessing_context"] = multiprocessing_context
    return EpochLoader(batches, plan, steps, rank, start_batch, kwargs)
