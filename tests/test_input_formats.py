"""Record formats (png, jpeg, raw) and the evaluation stream: what a reader gets back, and in which order."""

import json
import pathlib

import cv2
import fakes
import numpy as np
import pytest

from fundax.data import fundus_findings, pipeline, preparation

SIZE = 32


def _reference_batches(source, example, global_batch, process_index=0, process_count=1):
    """eval_batches as a plain loop: one record at a time, padding with record 0."""
    local = global_batch // process_count
    batches = []
    for g in range(-(-len(source) // global_batch)):
        rows = []
        for position in range(g * global_batch + process_index * local, g * global_batch + (process_index + 1) * local):
            real = position < len(source)
            row = example(source[position if real else 0], weight_scale=1.0 if real else 0.0)
            row["record_index"] = np.int32(position if real else -1)
            rows.append(row)
        batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
    return batches


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("n", [13, 16, 3])
def test_eval_batches_are_the_same_for_any_thread_count(n):
    source = fakes.records(n)
    example = pipeline.FindingExample("macular_hole", 2)
    want = _reference_batches(source, example, 8)
    for threads in (1, 4):
        _assert_same_batches(list(pipeline.eval_batches(source, example, global_batch=8, threads=threads)), want)
    # Every record once, in order; the pads (record 0 again) weigh 0 and are marked -1.
    index = np.concatenate([b["record_index"] for b in want])
    np.testing.assert_array_equal(index[index >= 0], np.arange(n))
    assert len(index) == 8 * -(-n // 8) and (np.concatenate([b["weight"] for b in want])[index < 0] == 0).all()


def test_eval_batches_of_two_processes_are_their_slices_of_every_global_batch():
    source = fakes.records(11)
    example = pipeline.FindingExample("macular_hole", 2)
    slices = [list(pipeline.eval_batches(source, example, global_batch=8, process_index=p, process_count=2,
                                         threads=3)) for p in (0, 1)]
    for p in (0, 1):
        _assert_same_batches(slices[p], _reference_batches(source, example, 8, p, 2))
    index = np.concatenate([np.concatenate([a["record_index"], b["record_index"]]) for a, b in zip(*slices)])
    np.testing.assert_array_equal(index, [*range(11), -1, -1, -1, -1, -1])


def test_eval_batches_of_an_empty_split_is_empty():
    assert list(pipeline.eval_batches([], pipeline.FindingExample("macular_hole", 2), global_batch=4)) == []


def _photo(path: pathlib.Path, seed: int) -> None:
    """A fundus-like disc with texture, so that JPEG has detail to lose."""
    rng = np.random.default_rng(seed)
    image = np.zeros((72, 96, 3), np.uint8)
    cv2.circle(image, (48, 36), 34, (40, 90, 190), -1)
    texture = rng.integers(-30, 30, image.shape)
    image = np.where(image > 0, np.clip(image.astype(int) + texture, 0, 255), 0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """The same four photographs prepared in every format: {format: data_dir}."""
    root = tmp_path_factory.mktemp("manual")
    lines = []
    for i in range(4):
        _photo(root / f"p{i}.png", i)
        lines.append(json.dumps({"image_id": f"p{i}", "file": f"p{i}.png", "split": "test", "disc": [30.0, 36.0],
                                 "fovea": [62.0, 37.0], "annotations": [{"annotator": "a", "findings": {}}]}))
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    data = {}
    for image_format in fundus_findings.IMAGE_FORMATS:
        data[image_format] = tmp_path_factory.mktemp(f"data_{image_format}")
        preparation.prepare("manual", data[image_format], image_size_px=SIZE, manual_dir=root,
                            image_format=image_format, show_progress=False, workers=1)
    return data


def _images(data_dir):
    source = pipeline.open_split("fundus_findings/manual", data_dir, "test")
    return np.stack([source[i]["image"] for i in range(len(source))])


def test_raw_and_png_records_hold_the_same_pixels_and_jpeg_is_close(formats):
    png, raw, jpeg = (_images(formats[f]) for f in ("png", "raw", "jpeg"))
    assert png.shape == (4, SIZE, SIZE, 3) and raw.dtype == png.dtype == np.uint8
    np.testing.assert_array_equal(raw, png)
    # The JPEG records hold the same pixels encoded at quality 95 (BGR, as OpenCV writes them).
    for lossless, lossy in zip(png, jpeg):
        ok, encoded = cv2.imencode(".jpg", lossless[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        np.testing.assert_array_equal(lossy, cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])
    assert np.abs(jpeg.astype(int) - png).max() > 0


def test_raw_records_are_stored_uncompressed_and_read_by_a_plain_builder(formats):
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module

    dataset_dir = preparation.dataset_dir(formats["raw"], "manual")
    files = sorted(dataset_dir.glob("*.array_record-*"))
    assert files
    for path in files:
        reader = array_record_module.ArrayRecordReader(str(path))
        assert "uncompressed" in reader.writer_options_string().split(",")
        reader.close()
    # A builder opened without options takes the format from the prepared metadata.
    builder = tfds.builder("fundus_findings/manual", data_dir=formats["raw"])
    assert isinstance(builder.info.features["image"], tfds.features.Tensor)
    assert builder.info.metadata["prepare"]["image_format"] == "raw"
    png_builder = tfds.builder("fundus_findings/manual", data_dir=formats["png"])
    assert isinstance(png_builder.info.features["image"], tfds.features.Image)


def test_photographs_decoded_leave_lesion_masks_encoded_and_the_reverse(formats):
    decoded = pipeline.open_split("fundus_findings/manual", formats["jpeg"], "test")[0]
    assert decoded["image"].shape == (SIZE, SIZE, 3) and isinstance(decoded["lesion_bits"], bytes)
    labels = pipeline.open_split("fundus_findings/manual", formats["jpeg"], "test", decode_images=False)[0]
    assert isinstance(labels["image"], bytes) and labels["lesion_bits"].shape == (SIZE, SIZE, 1)


def test_an_unknown_image_format_is_refused():
    with pytest.raises(ValueError, match="image_format must be 'png'.*'raw'"):
        fundus_findings.PrepareOptions(image_format="webp")


def test_input_benchmark_eval_stream_counts_cpu_time_and_refuses_too_few_records(formats):
    from fundax.bench import input as bench_input

    source = pipeline.open_split("fundus_findings/manual", formats["raw"], "test")
    result = bench_input.input_throughput(source, "macular_hole", threads=2, batch_size=2, batches=1, warmup=1,
                                          repeats=3, stream="eval")
    assert result["stream"] == "eval" and len(result["runs_per_cpu_s"]) == 3
    assert result["images_per_cpu_s"] == sorted(result["runs_per_cpu_s"])[1] > 0
    with pytest.raises(ValueError, match="need 6 records and the split holds 4"):
        bench_input.input_throughput(source, "macular_hole", threads=1, batch_size=2, batches=2, warmup=1,
                                     repeats=1, stream="eval")


def test_image_error_by_hand():
    from fundax.bench.input import image_error

    lossless = np.zeros((4, 4, 3), np.uint8)
    lossless[:2, :2] = 100  # the camera's field: 4 pixels, 12 values
    lossy = lossless.copy()
    lossy[0, 0, 0] = 105  # one value 5 levels off, inside the field
    got = image_error([{"image_id": b"a", "image": lossy}, {"image_id": b"b", "image": lossless}],
                      [{"image_id": b"a", "image": lossless}, {"image_id": b"b", "image": lossless}])
    assert got["photographs"] == 2 and got["max_abs"] == 5 and got["max_abs_median"] == 2.5
    assert got["mean_abs"] == pytest.approx((5 / 48 + 0) / 2) and got["mean_abs_field"] == pytest.approx(5 / 24)
    assert got["psnr_db_worst"] == pytest.approx(10 * np.log10(255**2 / (25 / 48)))
    assert got["psnr_field_db_worst"] == pytest.approx(10 * np.log10(255**2 / (25 / 12)))
    assert got["psnr_db_median"] == np.inf  # the second photograph is exact
    with pytest.raises(ValueError, match="record 0 is b'a' in one split and b'b'"):
        image_error([{"image_id": b"a", "image": lossy}], [{"image_id": b"b", "image": lossless}])
