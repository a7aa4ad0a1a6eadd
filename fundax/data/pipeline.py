"""Host input pipeline: prepared records → per-process batches → global device arrays.

The host only reads and decodes; augmentation and region masks are made on the
device (:mod:`fundax.data.augment`). Batches are laid out globally: global batch
g holds positions [g·B, (g+1)·B) of one seeded, per-epoch shuffled order of the
split, and process p reads only its contiguous slice of each global batch. So the
global batch, and with it every loss and update, is the same whatever the number
of processes and devices, and a process never reads another's examples.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from fundax import findings as findings_lib
from fundax.data import annotations

class DatasetError(ValueError):
    """A dataset or split that cannot be read."""


_EMPTY_BECAUSE = {
    "train": "no line of annotations.jsonl with split train was accepted",
    "validation": "it holds a stable 10% of the train lines, chosen by image_id, and none fell in it: add train lines",
    "test": "no line of annotations.jsonl with split test was accepted",
}


def open_split(dataset: str, data_dir: str | pathlib.Path, split: str, decode_images: bool = True) -> Any:
    """The random-access source of one prepared split (``tfds.data_source``).

    With ``decode_images=True``, the model's input, the photographs are decoded and the
    lesion masks stay encoded bytes: only evaluation's localisation reads the masks, and
    inflating a 512 px mask costs more CPU than decoding a JPEG photograph. With
    ``decode_images=False`` the photographs stay encoded and the masks are decoded: a
    cheap pass over labels and masks.
    """
    import tensorflow_datasets as tfds

    import fundax.data.fundus_findings  # noqa: F401  (registers the builder)

    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for unknown names and configs
        raise DatasetError(f"cannot open dataset {dataset!r} in {data_dir}: {e}") from None
    if not builder.is_prepared():
        raise DatasetError(
            f"dataset {dataset!r} is not prepared in {data_dir}; run "
            f"python -m fundax.prepare --source={dataset.split('/')[-1]} --data_dir={data_dir}")
    if split in (builder.info.metadata or {}).get("empty_splits", ()):
        raise DatasetError(f"split {split!r} of {dataset!r} in {data_dir} is empty: {_EMPTY_BECAUSE[split]} "
                           f"(rejected lines are in {pathlib.Path(builder.data_dir) / 'rejects.jsonl'})")
    if split not in builder.info.splits:
        raise DatasetError(
            f"dataset {dataset!r} in {data_dir} has no split {split!r}; it has {sorted(builder.info.splits)}")
    decoders = {"lesion_bits" if decode_images else "image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split=split, decoders=decoders)


def prepared_image_size(dataset: str, data_dir: str | pathlib.Path) -> int:
    """The side of the photographs ``prepare`` wrote for ``dataset``."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset, data_dir=data_dir)
    prepared = (builder.info.metadata or {}).get("prepare") or {}
    if "image_size_px" not in prepared:
        raise DatasetError(f"{dataset} in {data_dir} was not prepared by fundax: run python -m fundax.prepare")
    return int(prepared["image_size_px"])


def check_image_size(dataset: str, data_dir: str | pathlib.Path, image_size: int) -> None:
    """A model built for ``image_size`` reads only photographs prepared at that size."""
    size = prepared_image_size(dataset, data_dir)
    if size != image_size:
        raise DatasetError(f"{dataset} in {data_dir} is prepared at {size} px but image_size is "
                           f"{image_size}: set --config.image_size={size} or prepare it again")


class FindingExample:
    """Picks one finding's label, weight and regional cue out of a prepared record."""

    def __init__(self, finding: str, min_votes: int):
        self.index = findings_lib.finding_index(finding)
        self.min_votes = min_votes

    def weight(self, record: dict[str, Any]) -> float:
        """The record's weight for this finding: 0 when its grade is uncertain or not assessed (excluded)."""
        return float(annotations.consensus(np.asarray(record["votes"][self.index]), self.min_votes)[1])

    def label(self, record: dict[str, Any]) -> float:
        """The record's label for this finding: 1 present, 0 absent (or uncertain: see :meth:`weight`)."""
        return float(annotations.consensus(np.asarray(record["votes"][self.index]), self.min_votes)[0])

    def __call__(self, record: dict[str, Any], weight_scale: float = 1.0) -> dict[str, np.ndarray]:
        votes = np.asarray(record["votes"][self.index])
        label, weight = annotations.consensus(votes, self.min_votes)
        bits = int(record["region_bits"][self.index])
        return {
            "image": np.asarray(record["image"], np.uint8),
            "disc": np.asarray(record["disc"], np.float32),
            "fovea": np.asarray(record["fovea"], np.float32),
            # Absent findings have an empty cue: the guidance suppresses activation everywhere.
            "region_bits": np.int32(bits) * (label > 0).astype(np.int32),
            "label": np.float32(label),
            # A positive whose regions nobody marked (image-level labels only) has no regional cue: its
            # BCE counts, its guidance term does not (an empty cue would suppress the lesion itself).
            "guided": np.float32(0.0 if label > 0 and bits == 0 else 1.0),
            "weight": np.float32(weight * weight_scale),
        }


def scored_indices(source: Any, example: FindingExample) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the records of ``source`` whose grade for the finding is certain (weight > 0), and their labels.

    Training draws only from these: an excluded photograph would fill a batch slot with
    a weight-0 row that still moves the BatchNorm statistics. ``source`` may skip
    decoding the photographs (:func:`open_split` with ``decode_images=False``).
    """
    indices, labels = [], []
    for i in range(len(source)):
        record = source[i]
        if example.weight(record) > 0:
            indices.append(i)
            labels.append(example.label(record))
    return np.array(indices, np.int64), np.array(labels, np.float32)


def _local_position(k: int, global_batch: int, process_index: int, process_count: int) -> int:
    """Global stream position of the k-th example this process reads."""
    local_batch = global_batch // process_count
    return (k // local_batch) * global_batch + process_index * local_batch + k % local_batch


def train_dataset(
    source: Any,
    example: FindingExample,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    threads: int = 8,
    prefetch_batches: int = 2,
    indices: np.ndarray | None = None,
) -> grain.IterDataset:
    """An endless, reshuffled-each-epoch stream of this process's slices of global batches.

    ``indices``: the records to draw from (default: all), e.g. :func:`scored_indices`.
    """
    if global_batch % process_count:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {process_count} processes")
    if len(source) == 0:
        raise DatasetError("the training split is empty")
    if indices is not None and len(indices) == 0:
        raise DatasetError("no photograph of the training split has a certain grade for this finding "
                           "(all are excluded: one vote short of min_votes, or not assessed)")
    records = grain.MapDataset.range(len(source)) if indices is None else grain.MapDataset.source(
        [int(i) for i in indices])
    order = records.shuffle(seed=seed).repeat()
    local = grain.MapDataset.range(len(order)).map(
        lambda k: example(source[order[_local_position(k, global_batch, process_index, process_count)]]))
    local_batch = global_batch // process_count
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, prefetch_batches) * local_batch)
    return local.to_iter_dataset(read).batch(local_batch, drop_remainder=True)


def eval_batches(
    source: Any,
    example: FindingExample,
    *,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    threads: int = 8,
    prefetch_batches: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of a split once, in order, padded to whole global batches.

    Padding repeats record 0 with weight 0 and ``record_index`` −1, so it never
    counts; ``record_index`` maps each result back to its record. ``threads`` read and
    decode ahead, as in :func:`train_dataset`; the batches are the same for any number.
    """
    local_batch = global_batch // process_count
    num_batches = -(-len(source) // global_batch)
    if num_batches == 0:
        return iter(())

    def row(k: int) -> dict[str, np.ndarray]:
        position = _local_position(k, global_batch, process_index, process_count)
        real = position < len(source)
        out = example(source[position if real else 0], weight_scale=1.0 if real else 0.0)
        out["record_index"] = np.int32(position if real else -1)
        return out

    rows = grain.MapDataset.range(num_batches * local_batch).map(row)
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, prefetch_batches) * local_batch)
    return iter(rows.to_iter_dataset(read).batch(local_batch))


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Global arrays from this process's slice of a batch."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def dataset_fingerprint(dataset: str, data_dir: str | pathlib.Path) -> dict[str, Any]:
    """What identifies a prepared dataset: name, version, split sizes, and a sha256 over how it was
    prepared and from what (``prepare``'s parameters and input fingerprint in its metadata)."""
    import hashlib
    import json

    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset, data_dir=data_dir)
    metadata = dict(builder.info.metadata or {})
    made = {key: metadata.get(key) for key in ("prepare", "inputs")}
    return {
        "name": dataset, "version": str(builder.version),
        "sha256": hashlib.sha256(json.dumps(made, sort_keys=True, default=str).encode()).hexdigest(),
        "split_sizes": {name: info.num_examples for name, info in builder.info.splits.items()},
    }
