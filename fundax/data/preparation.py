"""Preparing ``fundus_findings`` into a data directory: once, and reused while the parameters match."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any

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
) -> PrepareResult:
    """Prepare (or reuse, when prepared with the same parameters) one config of the dataset."""
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    if source not in ("manual", "synthetic"):
        raise ValueError(f"--source must be 'manual' or 'synthetic', got {source!r}")
    if source == "manual" and not manual_dir:
        raise ValueError("--source=manual needs --manual_dir (the folder holding annotations.jsonl)")
    if source == "manual" and not pathlib.Path(manual_dir).is_dir():
        raise ValueError(f"--manual_dir {manual_dir} is not a directory")
    data_dir = pathlib.Path(data_dir)
    options = fundus_findings.PrepareOptions(
        image_size_px=image_size_px, image_format=image_format,
        synthetic_config=synthetic_config or synthetic.SyntheticConfig(), strict=strict, workers=workers,
        max_pixels=max_pixels)
    target = dataset_dir(data_dir, source)
    if (target / "dataset_info.json").exists():
        existing = load_metadata(target)
        if not overwrite:
            if existing.get("prepare") != options.params(source):
                raise ValueError(
                    f"{target} was prepared with {json.dumps(existing.get('prepare'))}, not "
                    f"{json.dumps(options.params(source))}: use another --data_dir or --overwrite")
            if source == "manual" and existing.get("source_dir") != str(pathlib.Path(manual_dir)):
                raise ValueError(
                    f"{target} was prepared from {existing.get('source_dir')}, not {manual_dir}: "
                    "use another --data_dir or --overwrite")
            builder = tfds.builder(f"{DATASET}/{source}", data_dir=data_dir)
            return PrepareResult(target, existing, _split_sizes(builder), reused=True)
        shutil.rmtree(target)
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
    return PrepareResult(target, load_metadata(target), _split_sizes(builder), reused=False)


def load_metadata(dataset_dir: pathlib.Path) -> dict[str, Any]:
    path = dataset_dir / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _split_sizes(builder: Any) -> dict[str, int]:
    return {name: split.num_examples for name, split in builder.info.splits.items()}


def summary(result: PrepareResult) -> str:
    """Counts of lines and labels, as a plain-text table."""
    meta = result.metadata
    lines = [
        f"{'reused' if result.reused else 'prepared'} {result.dataset_dir}",
        f"lines read {meta['num_read']}, accepted {meta['num_accepted']}, rejected {meta['num_rejected']}"
        + (f" (reasons in {result.rejects_path})" if meta["num_rejected"] else ""),
        "split       " + " ".join(f"{n:>10}" for n in ("examples",))
        + "  finding                      present   absent  excluded",
    ]
    for split, counts in meta["label_counts"].items():
        for k, name in enumerate(findings_lib.FINDINGS):
            c = counts[name]
            head = f"{split:<11} {result.split_sizes.get(split, 0):>10}" if k == 0 else " " * 22
            lines.append(f"{head}  {name:<26} {c['present']:>8} {c['absent']:>8} {c['excluded']:>9}")
    return "\n".join(lines)
