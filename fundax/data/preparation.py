"""Preparing ``fundus_findings`` into a data directory: once, and reused while its inputs and parameters match."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

from fundax import configs
from fundax import findings as findings_lib
from fundax.data import fundus_findings, images, synthetic

DATASET = "fundus_findings"


@dataclasses.dataclass
class PrepareResult:
    """Where the prepared dataset is, what it holds and whether it was made now."""

    dataset_dir: pathlib.Path
    metadata: dict[str, Any]
    split_sizes: dict[str, int]
    reused: bool

    @property
    def rejects_path(self) -> pathlib.Path:
        return self.dataset_dir / fundus_findings.REJECTS_FILE


def dataset_dir(data_dir: str | pathlib.Path, config_name: str) -> pathlib.Path:
    """Where TFDS keeps one prepared config."""
    return pathlib.Path(data_dir) / DATASET / config_name / str(fundus_findings.FundusFindings.VERSION)


def _remove_incomplete(data_dir: pathlib.Path, config_name: str) -> None:
    """A failed prepare leaves folders without dataset_info.json; TFDS would trip over them."""
    config_dir = data_dir / DATASET / config_name
    if not config_dir.is_dir():
        return
    for child in config_dir.iterdir():
        if child.is_dir() and not (child / "dataset_info.json").exists():
            shutil.rmtree(child)


def _check_manual_dir(manual_dir: pathlib.Path) -> None:
    if not manual_dir.is_dir():
        raise ValueError(f"--manual_dir {manual_dir} is not a directory")
    if not (manual_dir / "annotations.jsonl").is_file():
        raise ValueError(f"--manual_dir {manual_dir} holds no annotations.jsonl (see docs/DATA_FORMAT.md)")


def _check_writable(data_dir: pathlib.Path) -> None:
    """Only before writing: a prepared dataset is reused from a read-only data_dir too."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"--data_dir {data_dir} is not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--data_dir {data_dir} cannot be created: {e.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ValueError(f"--data_dir {data_dir} is not writable")


_UNRECORDED = object()


def _shown(value: Any) -> str:
    return "(not recorded)" if value is _UNRECORDED else repr(value)


def _changes(existing: dict[str, Any], params: dict[str, Any], inputs: dict[str, Any],
             source_dir: str | None) -> list[str]:
    """How a prepared dataset's parameters and inputs differ from those wanted now, one phrase each."""
    before, now = configs.flatten(existing.get("prepare") or {}), configs.flatten(params)
    keys = [*now, *(key for key in before if key not in now)]
    differing = [key for key in keys if before.get(key, _UNRECORDED) != now.get(key, _UNRECORDED)]
    synthetic_before_fingerprints = source_dir is None and not existing.get("inputs")
    if synthetic_before_fingerprints:
        # A synthetic set prepared before inputs and max_pixels were recorded: its generator settings
        # say what it is, and the generator's photographs are far below any pixel limit.
        differing = [key for key in differing
                     if not (key == "max_pixels" and key not in before and now[key] == images.DEFAULT_MAX_PIXELS)]
    changes = []
    if differing:
        changes.append("it was prepared with " + ", ".join(
            f"{key} {_shown(before.get(key, _UNRECORDED))}, not {_shown(now.get(key, _UNRECORDED))}"
            for key in differing))
    if source_dir is not None and existing.get("source_dir") != source_dir:
        changes.append(f"it was prepared from {existing.get('source_dir')}, not {source_dir}")
        return changes
    recorded = existing.get("inputs")
    if synthetic_before_fingerprints:
        pass
    elif not recorded:
        changes.append("its inputs were not recorded")
    elif recorded.get("annotations_sha256") != inputs.get("annotations_sha256"):
        changes.append(f"annotations.jsonl of {source_dir} changed")
    elif recorded.get("files_sha256") != inputs.get("files_sha256"):
        changes.append(f"the photographs or lesion masks that {source_dir}/annotations.jsonl names changed "
                       "(size or modification time)")
    elif recorded != inputs and not differing:
        changes.append("the synthetic generator changed")
    return changes


def _check_usable(result: PrepareResult, strict: bool) -> None:
    meta = result.metadata
    if meta["num_accepted"] == 0:
        source = pathlib.Path(meta.get("source_dir", result.dataset_dir)) / "annotations.jsonl"
        raise fundus_findings.PrepareError(
            f"no photograph of {source} was accepted ({meta['num_read']} lines read): reasons in "
            f"{result.rejects_path}")
    if strict and meta["num_rejected"]:
        n = meta["num_rejected"]
        raise fundus_findings.PrepareError(
            f"--strict: {result.dataset_dir} holds {n} rejected line{'s' if n != 1 else ''}, prepared without "
            f"--strict (reasons in {result.rejects_path})")


def prepare(
    source: str,
    data_dir: str | pathlib.Path,
    *,
    image_size_px: int = 512,
    manual_dir: str | pathlib.Path | None = None,
    synthetic_config: synthetic.SyntheticConfig | None = None,
    image_format: str = "png",
    strict: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    show_progress: bool = True,
    locate_missing: bool = False,
) -> PrepareResult:
    """Prepare (or reuse, when prepared from the same inputs with the same parameters) one config of the dataset.

    A dataset prepared from other inputs or with other parameters is refused (ValueError
    naming what changed) unless ``overwrite``; see :func:`fundus_findings.input_fingerprint`.
    """
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    if source not in ("manual", "synthetic"):
        raise ValueError(f"--source must be 'manual' or 'synthetic', got {source!r}")
    if source == "manual" and not manual_dir:
        raise ValueError("--source=manual needs --manual_dir (the folder holding annotations.jsonl)")
    if source == "manual":
        _check_manual_dir(pathlib.Path(manual_dir))
    data_dir = pathlib.Path(data_dir)
    options = fundus_findings.PrepareOptions(
        image_size_px=image_size_px, image_format=image_format,
        synthetic_config=synthetic_config or synthetic.SyntheticConfig(), strict=strict, workers=workers,
        max_pixels=max_pixels, locate_missing=locate_missing)
    target = dataset_dir(data_dir, source)
    if (target / "dataset_info.json").exists():
        existing = load_metadata(target)
        if not overwrite:
            source_dir = str(pathlib.Path(manual_dir)) if source == "manual" else None
            changes = _changes(existing, options.params(source),
                               fundus_findings.input_fingerprint(source, manual_dir, options), source_dir)
            if changes:
                raise ValueError(f"{target} is out of date: {'; '.join(changes)}; prepare it again with python -m "
                                 "fundax.prepare --overwrite, or use another --data_dir")
            builder = tfds.builder(f"{DATASET}/{source}", data_dir=data_dir)
            result = PrepareResult(target, existing, _split_sizes(builder), reused=True)
            _check_usable(result, strict)
            return result
        shutil.rmtree(target)
    _check_writable(data_dir)
    _remove_incomplete(data_dir, source)

    tfds.disable_progress_bar()
    config = options.synthetic_config
    synthesis = tqdm(desc="synthesizing photographs", unit="img", total=config.num_train + config.num_test,
                     disable=not show_progress or source != "synthetic", mininterval=1.0)
    bar = tqdm(desc="preparing photographs", unit="img", disable=not show_progress, mininterval=1.0)
    builder = fundus_findings.FundusFindings(
        config=source, data_dir=data_dir, file_format="array_record", options=options, progress=bar.update,
        synthesis_progress=synthesis.update)
    download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
    try:
        builder.download_and_prepare(download_config=download_config)
    except BaseException:
        _remove_incomplete(data_dir, source)
        raise
    finally:
        synthesis.close()
        bar.close()
    result = PrepareResult(target, load_metadata(target), _split_sizes(builder), reused=False)
    _check_usable(result, strict)
    return result


def load_metadata(dataset_dir: pathlib.Path) -> dict[str, Any]:
    path = dataset_dir / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _split_sizes(builder: Any) -> dict[str, int]:
    """Photographs per split, 0 for a split left out as empty."""
    splits = builder.info.splits
    return {name: splits[name].num_examples if name in splits else 0 for name in fundus_findings.SPLITS}


def summary(result: PrepareResult) -> str:
    """Counts of lines and labels, as a plain-text table."""
    meta = result.metadata
    lines = [
        f"{'reused' if result.reused else 'prepared'} {result.dataset_dir}",
        f"lines read {meta['num_read']}, accepted {meta['num_accepted']}, rejected {meta['num_rejected']}"
        + (f" (reasons in {result.rejects_path})" if meta["num_rejected"] else ""),
        "split       " + " ".join(f"{n:>10}" for n in ("examples",))
        + "  finding                      present   absent  excluded  not assessed",
    ]
    for split, counts in meta["label_counts"].items():
        for k, name in enumerate(findings_lib.FINDINGS):
            c = counts[name]
            head = f"{split:<11} {result.split_sizes.get(split, 0):>10}" if k == 0 else " " * 22
            # Sets prepared before "assessed" existed assessed every finding.
            lines.append(f"{head}  {name:<26} {c['present']:>8} {c['absent']:>8} {c['excluded']:>9}"
                         f" {c.get('not_assessed', 0):>13}")
    if "located" in meta:
        lines.append(f"disc and fovea located in {len(meta['located'])} photograph(s) whose lines had none "
                     f"(metadata.json: located)")
    if meta.get("empty_splits"):
        lines.append(f"empty splits, left out of the dataset: {', '.join(meta['empty_splits'])}")
    return "\n".join(lines)
