"""``fundus_findings``: the TFDS dataset of regionally annotated fundus photographs.

Two configs share one code path:

* ``manual`` reads a manual directory (``annotations.jsonl`` + photographs, see
  ``docs/DATA_FORMAT.md``);
* ``synthetic`` first writes such a directory with :mod:`fundax.data.synthetic`,
  then reads it exactly as ``manual`` does.

Prepare-time preprocessing crops the black surround, pads to square and resizes
to ``image_size_px``, carrying the disc and fovea, and the lesion masks of a line
that has them, through the same transform.
Splits: ``train`` (the derivation set), ``validation`` (a deterministic 10% of
the file's train lines, chosen by hashing ``image_id``, so that it is stable when
lines are added or reordered) and ``test``. A split that no accepted photograph
falls in is left out of the dataset (TFDS cannot write an empty one) and named in
``metadata["empty_splits"]``. Every rejected line is kept, with its reason, in
``rejects.jsonl`` beside the prepared files, in line order. Files are
``array_record``: read them with ``tfds.data_source`` (no TensorFlow needed).

Photographs are stored in one of :data:`IMAGE_FORMATS`: ``png`` (lossless, the
default), ``jpeg`` (quality 95: a fifth of PNG's size, about 3 times cheaper to read)
or ``raw`` (the prepared uint8 pixels, uncompressed: lossless and the cheapest to read,
at 3 times PNG's size); experiments/BENCHMARKS.md has the figures. A builder opened on
a prepared dataset takes the format it was written in from its metadata.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds

from fundax import findings as findings_lib
from fundax.data import annotations, images, synthetic

SPLITS = ("train", "validation", "test")
IMAGE_FORMATS = ("png", "jpeg", "raw")
JPEG_QUALITY = 95
VALIDATION_PERCENT = 10
REJECTS_FILE = "rejects.jsonl"
MANUAL_INSTRUCTIONS = """\
Pass the manual directory with --manual_dir: it holds annotations.jsonl (one JSON
object per photograph, see DATA_FORMAT.md) and the photographs it names by relative path.
"""


class PrepareError(RuntimeError):
    """Preparation cannot go on (e.g. a rejection under ``strict``)."""


def is_validation(image_id: str, percent: int = VALIDATION_PERCENT) -> bool:
    """Whether a train line belongs to the validation split: a stable hash of its id."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """How photographs are prepared; the config (``manual`` / ``synthetic``) says where from."""

    image_size_px: int = 512
    image_format: str = "png"
    synthetic_config: synthetic.SyntheticConfig = dataclasses.field(default_factory=synthetic.SyntheticConfig)
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    strict: bool = False
    workers: int | None = None
    locate_missing: bool = False
    """Lines without disc and fovea get them from :func:`fundax.landmarks.locate_photograph` (else rejected)."""

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be 'png' (lossless), 'jpeg' (quality {JPEG_QUALITY}) or 'raw' "
                             f"(lossless, uncompressed), got {self.image_format!r}")
        if not 16 <= int(self.image_size_px) <= 4096:
            raise ValueError(f"image_size must lie in [16, 4096] px, got {self.image_size_px}")

    def params(self, source: str) -> dict[str, Any]:
        """What determines the prepared records: stored, and compared on reuse."""
        params: dict[str, Any] = {
            "source": source,
            "image_size_px": int(self.image_size_px),
            "image_format": self.image_format,
            "max_pixels": int(self.max_pixels),
        }
        if source == "synthetic":
            params["synthetic"] = json.loads(json.dumps(dataclasses.asdict(self.synthetic_config)))
        if self.locate_missing and source == "manual":  # absent otherwise: datasets prepared before it match
            from fundax import landmarks

            params["locate_missing"] = landmarks.LOCATOR_VERSION
        return params


def _generator_key(config: synthetic.SyntheticConfig) -> str:
    """The synthetic photographs depend only on the generator's settings and its writer version."""
    params = dataclasses.asdict(config) | {"writer": synthetic.WRITER_VERSION}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _named_files(annotations_text: str) -> set[str]:
    """The photographs and lesion masks that the lines of an annotations file name, as written."""
    files = set()
    for text in annotations_text.removeprefix("\ufeff").split("\n"):
        try:
            line = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if not isinstance(line, dict):
            continue
        masks = line.get(annotations.LESION_MASKS_KEY)
        for file in [line.get("file"), *(masks.values() if isinstance(masks, dict) else ())]:
            if isinstance(file, str):
                files.add(file)
    return files


def input_fingerprint(config_name: str, manual_dir: str | os.PathLike | None,
                      options: PrepareOptions) -> dict[str, Any]:
    """What the prepared records are made from, beside the parameters: stored, and compared on reuse.

    ``manual``: the sha256 of ``annotations.jsonl``, and one over the (path, size,
    mtime_ns) of every photograph and lesion mask its lines name, a missing one
    included. Hashing the photographs' contents would read the whole set on every
    run; a file rewritten in place with the same size and modification time goes
    unnoticed. ``synthetic``: the generator's settings, since it is deterministic.
    """
    if config_name == "synthetic":
        return {"generator_sha256": _generator_key(options.synthetic_config)}
    path = pathlib.Path(manual_dir) / "annotations.jsonl"
    data = path.read_bytes()
    stats = []
    for file in sorted(_named_files(data.decode("utf-8", "replace"))):
        try:
            stat = annotations.resolve_image_path(manual_dir, file).stat()
            stats.append([file, stat.st_size, stat.st_mtime_ns])
        except (annotations.AnnotationError, OSError):
            stats.append([file, None, None])
    return {
        "annotations_sha256": hashlib.sha256(data).hexdigest(),
        "files_sha256": hashlib.sha256(json.dumps(stats).encode()).hexdigest(),
        "num_files": len(stats),
    }


@dataclasses.dataclass
class _Outcome:
    example: dict[str, Any] | None = None
    rejection: annotations.Rejection | None = None


class FundusFindings(tfds.core.GeneratorBasedBuilder):
    """Regionally annotated fundus photographs (Son et al., §2.1)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Lesion masks: lesion_bits (bit k = finding k) and lesion_known, from lesion_masks."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="manual", description="Photographs and annotations.jsonl of a manual directory."),
        tfds.core.BuilderConfig(name="synthetic", description="Synthetic photographs, three simulated graders."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

    def __init__(self, *args: Any, options: PrepareOptions | None = None,
                 progress: Callable[[int], None] | None = None,
                 synthesis_progress: Callable[[int], None] | None = None, **kwargs: Any):
        # _info(), called by the base, reads both; without options the builder reads a prepared dataset.
        self.options = options or PrepareOptions()
        self._reading = options is None
        super().__init__(*args, **kwargs)
        self.rejections: list[annotations.Rejection] = []
        self.num_read = 0
        self.empty_splits: list[str] = []
        self._split_votes: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
        self._progress = progress
        self._synthesis_progress = synthesis_progress

    def _info(self) -> tfds.core.DatasetInfo:
        num_findings = len(findings_lib.FINDINGS)
        image_format = self.options.image_format
        if self._reading:
            image_format = _written_image_format(pathlib.Path(self.data_path)) or image_format
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": _image_feature(image_format),
                "image_id": tfds.features.Text(),
                "file": tfds.features.Text(),
                "disc": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "fovea": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "votes": tfds.features.Tensor(shape=(num_findings,), dtype=np.int32),
                "region_bits": tfds.features.Tensor(shape=(num_findings,), dtype=np.uint8),
                "num_graders": tfds.features.Scalar(dtype=np.int32),
                # Lesion pixels, where the line gives masks: bit k of a pixel = finding k's lesion;
                # bit k of lesion_known = finding k has a mask (else its bits say nothing).
                "lesion_bits": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "lesion_known": tfds.features.Scalar(dtype=np.uint8),
                "line": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/fundax/fundax",
        )

    def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
        if self.builder_config.name == "manual":
            return pathlib.Path(dl_manager.manual_dir)
        # Photographs are written at their own size; only the generator's settings matter.
        key = _generator_key(self.options.synthetic_config)[:12]
        out_dir = pathlib.Path(dl_manager.download_dir) / f"synthetic_{key}"
        if not (out_dir / "annotations.jsonl").exists():
            synthetic.write_manual_dir(out_dir, self.options.synthetic_config, workers=self.options.workers,
                                       progress=self._synthesis_progress)
        return out_dir

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        manual_dir = self._manual_dir(dl_manager)
        # Taken before the lines are read, so that an edit made while preparing shows on the next run.
        self.info.metadata["inputs"] = input_fingerprint(self.builder_config.name, manual_dir, self.options)
        locate = None
        if self.options.locate_missing and self.builder_config.name == "manual":
            from fundax import landmarks

            locate = lambda path: landmarks.locate_photograph(path, self.options.max_pixels)  # noqa: E731
        read = annotations.read_annotations(manual_dir / "annotations.jsonl", locate_missing=locate)
        if locate is not None:  # which lines had their centres located, and what was found: kept with the dataset
            self.info.metadata["located"] = {
                r.image_id: {"disc": list(r.disc), "fovea": list(r.fovea), **r.extra[annotations.LOCATED_KEY]}
                for r in read.records if annotations.LOCATED_KEY in r.extra}
        self.num_read = read.num_read
        self.rejections = list(read.rejections)
        by_split: dict[str, list[annotations.Record]] = {split: [] for split in SPLITS}
        for record in read.records:
            split = record.split
            if split == "train" and is_validation(record.image_id):
                split = "validation"
            by_split[split].append(record)
        self._fail_if_strict()
        self.info.metadata["prepare"] = self.options.params(self.builder_config.name)
        self.info.metadata["source_dir"] = os.fspath(manual_dir)
        generators = {}
        for split, records in by_split.items():
            # Whether a split is empty shows only once its photographs are checked; TFDS
            # fails on a split that yields nothing, so each is started here and an empty one left out.
            examples = self._generate_examples(records, manual_dir, split)
            first = next(examples, None)
            if first is None:
                self.empty_splits.append(split)
            else:
                generators[split] = itertools.chain([first], examples)
        return generators

    def _generate_examples(
        self, records: list[annotations.Record], manual_dir: pathlib.Path, split: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for outcome in _prepared(records, manual_dir, self.options):
            if self._progress is not None:
                self._progress(1)
            if outcome.rejection is not None:
                self.rejections.append(outcome.rejection)
                self._fail_if_strict()
                continue
            self._split_votes[split].append(outcome.example["votes"])
            yield outcome.example["image_id"], outcome.example

    def _fail_if_strict(self) -> None:
        if self.options.strict and self.rejections:
            first = min(self.rejections, key=lambda r: r.line_number)
            raise PrepareError(
                f"--strict: {first.source}:{first.line_number}: {first.reason}"
                f" ({len(self.rejections)} rejected so far)"
            )

    def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager, download_config: Any) -> None:
        super()._download_and_prepare(dl_manager, download_config)
        if self.options.image_format == "raw":
            _store_uncompressed(pathlib.Path(self.data_dir))
        write_rejects(pathlib.Path(self.data_dir) / REJECTS_FILE, self.rejections)
        self.info.metadata["empty_splits"] = self.empty_splits
        self.info.metadata["num_read"] = self.num_read
        self.info.metadata["num_rejected"] = len(self.rejections)
        self.info.metadata["num_accepted"] = self.num_read - len(self.rejections)
        self.info.metadata["label_counts"] = {
            split: label_counts(np.array(votes, np.int32).reshape(-1, len(findings_lib.FINDINGS)))
            for split, votes in self._split_votes.items()
        }


def _image_feature(image_format: str) -> tfds.features.FeatureConnector:
    # The side is in metadata["prepare"]; (None, None) lets any prepared size be read.
    if image_format == "raw":
        return tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes")
    return tfds.features.Image(shape=(None, None, 3), encoding_format=image_format)


def _written_image_format(dataset_dir: pathlib.Path) -> str | None:
    """The image format a prepared dataset was written in, None when there is none yet.

    The features of a record depend on it (raw pixels are a tensor, not an image), so a
    reader must know it before it parses the first record.
    """
    try:
        metadata = json.loads((dataset_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    return ((metadata or {}).get("prepare") or {}).get("image_format")


def _store_uncompressed(dataset_dir: pathlib.Path) -> None:
    """Rewrite the record files of ``dataset_dir`` without compression, record for record.

    TFDS writes array_record with zstd. Raw pixels are there to spare the reader work,
    and inflating a zstd'd 512 px photograph costs about as much CPU as decoding a JPEG
    one; stored as they are, a record is read at memory speed. Readers find the
    compression in each chunk's header, so nothing else changes.
    """
    from array_record.python import array_record_module

    for path in sorted(dataset_dir.glob("*.array_record-*")):
        partial = path.with_name(path.name + ".uncompressed")
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        writer = array_record_module.ArrayRecordWriter(os.fspath(partial), "group_size:1,uncompressed")
        try:
            for start in range(0, reader.num_records(), 64):
                for record in reader.read(range(start, min(start + 64, reader.num_records()))):
                    writer.write(record)
        finally:
            writer.close()
            reader.close()
        os.replace(partial, path)


def label_counts(votes: np.ndarray, min_votes: int = 2) -> dict[str, dict[str, int]]:
    """Per finding, how many records are present, absent, excluded (uncertain) and not assessed."""
    label, weight = annotations.consensus(votes, min_votes)
    return {
        name: {
            "present": int(np.sum((weight[:, k] > 0) & (label[:, k] > 0))),
            "absent": int(np.sum((weight[:, k] > 0) & (label[:, k] == 0))),
            "excluded": int(np.sum((weight[:, k] == 0) & (votes[:, k] > 0))),
            "not_assessed": int(np.sum(votes[:, k] == annotations.NOT_ASSESSED)),
        }
        for k, name in enumerate(findings_lib.FINDINGS)
    }


def _prepared(records: list[annotations.Record], manual_dir: pathlib.Path,
              options: PrepareOptions) -> Iterator[_Outcome]:
    """Each record prepared, in order, a few at a time ahead of the reader."""
    workers = options.workers or os.cpu_count() or 1
    # cv2 and PIL release the GIL while decoding, resizing and encoding, so
    # threads use every core without forking a process that may hold jax.
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # A bounded window: splits are started together (see _split_generators), and
        # photographs waiting for the writer would otherwise pile up in memory.
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        for record in records:
            pending.append(pool.submit(_prepare_record, record, manual_dir, options))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _prepare_record(
    record: annotations.Record, manual_dir: pathlib.Path, options: PrepareOptions
) -> _Outcome:
    """Load, check and preprocess one photograph; a failure becomes a rejection."""
    try:
        path = annotations.resolve_image_path(manual_dir, record.file)
        image = images.load_image(path, max_pixels=options.max_pixels, min_side_px=images.MIN_SIDE_PX)
        height, width = image.shape[:2]
        images.check_inside(record.disc, record.fovea, width, height)
        crop = images.SquareCrop.of(image, options.image_size_px)
        lesion_bits = np.zeros((options.image_size_px, options.image_size_px, 1), np.uint8)
        lesion_known = 0
        for name, mask_file in record.lesion_masks.items():
            key = f"{annotations.LESION_MASKS_KEY}[{name!r}]"
            mask = images.load_mask(annotations.resolve_image_path(manual_dir, mask_file, key), (height, width),
                                    max_pixels=options.max_pixels)
            k = findings_lib.finding_index(name)
            lesion_bits[crop.mask(mask), 0] |= np.uint8(1 << k)
            lesion_known |= 1 << k
        image, disc, fovea = crop.image(image), crop.point(record.disc), crop.point(record.fovea)
    except (annotations.AnnotationError, images.ImageError) as e:
        return _Outcome(rejection=annotations.Rejection(
            source=os.fspath(manual_dir / "annotations.jsonl"),
            line_number=record.line_number, reason=str(e), text=record.line))
    return _Outcome(example={
        "image": _encoded(image, options.image_format, record.image_id),
        "image_id": record.image_id,
        "file": record.file,
        "disc": np.asarray(disc, np.float32),
        "fovea": np.asarray(fovea, np.float32),
        "votes": record.votes().astype(np.int32),
        "region_bits": record.region_bits().astype(np.uint8),
        "num_graders": np.int32(len(record.graders)),
        "lesion_bits": _png(lesion_bits, record.image_id),
        "lesion_known": np.uint8(lesion_known),
        "line": record.line,
    })


def _encoded(image: np.ndarray, image_format: str, image_id: str) -> bytes | np.ndarray:
    """The photograph as its record stores it: PNG or JPEG bytes, or the RGB pixels themselves."""
    if image_format == "raw":
        return np.ascontiguousarray(image, np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpeg" else []
    ok, encoded = cv2.imencode(".png" if image_format == "png" else ".jpg", image[:, :, ::-1], params)
    if not ok:  # cv2 cannot encode a well-formed uint8 image only if it is out of memory
        raise PrepareError(f"could not encode {image_id}")
    return encoded.tobytes()


def _png(image: np.ndarray, image_id: str) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise PrepareError(f"could not encode the lesion mask of {image_id}")
    return encoded.tobytes()


def write_rejects(path: pathlib.Path, rejections: list[annotations.Rejection]) -> None:
    """One JSON object per rejected line, in line order: file, line number, reason and original text."""
    with open(path, "w", encoding="utf-8") as f:
        for rejection in sorted(rejections, key=lambda r: r.line_number):
            f.write(json.dumps(rejection.as_json(), ensure_ascii=False) + "\n")
