"""Prepare a dataset from its raw download with its tfds builder, into array_record files.

    python -m dnl_jax.cli.prepare NAME --manual_dir RAW --data_dir OUT [--num_shards S]
        [--overwrite] [--short_side 256 --max_frames 300 --num_workers N]   (video only)

NAME is one of DATASETS: cityscapes, ade20k, pascal_context (59 classes), coco (2017 instances),
kinetics (any video dataset in the Kinetics layout) and ucf101 (split 1). The expected raw layout
of each is in its module's docstring; the builders are in builders.py. Output: OUT/NAME/1.0.0/ as
tfds writes it (dataset_info.json, features.json, metadata.json, NAME-SPLIT.array_record-*
shards), which `dnl_jax.data.load_split` reads. Pixels whose raw label lies outside the format's
range become 255 and are reported, as are COCO's malformed polygons. No network is used and
TensorFlow is not needed.

tfds would leave an empty OUT/NAME/ and OUT/downloads/ behind after a failure, and with
--overwrite it deletes the old data before building the new; so the builder writes into
OUT/.NAME.incomplete-XXXX/ and the result is renamed to OUT/NAME only once every split is complete.
A crash or a bad input leaves nothing that looks prepared.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from dnl_jax.data import builders, datasets, sources

# The registry's datasets that are read from prepared files (data/datasets.py), each with its
# tfds builder (builders.py).
DATASETS = tuple(name for name, dataset in datasets.DATASETS.items() if dataset.prepared)


def build(
    name: str, manual_dir: str, data_dir: str, *, num_shards: int | None = None, **video_options
) -> None:
    """Runs the tfds builder of `name` on `manual_dir`, writing `data_dir/name/VERSION`."""
    import tensorflow_datasets as tfds

    builder = builders.BUILDERS[name](
        data_dir=data_dir, file_format="array_record", **video_options
    )
    builder.download_and_prepare(
        download_dir=os.path.join(data_dir, "downloads"),
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False, num_shards=num_shards
        ),
    )


def prepare(
    name: str,
    manual_dir: str,
    data_dir: str,
    *,
    num_shards: int | None = None,
    overwrite: bool = False,
    short_side: int = 256,
    max_frames: int = 300,
    num_workers: int = 1,
    progress: bool = False,
    log=print,
) -> str:
    """Prepares dataset `name`; returns its directory. Raises ValueError on any bad input.

    `num_shards` None lets tfds choose (by size); `progress` shows tfds's bars (the command line
    turns them on)."""
    import tensorflow_datasets as tfds

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}.")
    unit = datasets.get(name)
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1.")
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
        raise ValueError(
            f"--manual_dir {manual_dir} does not exist or is empty; it must hold "
            f"{unit.raw_files} (see dnl_jax/data/{unit.module}.py)."
        )
    final_dir = os.path.join(data_dir, name)
    if os.path.exists(final_dir) and not overwrite:
        raise ValueError(f"{final_dir} already exists; pass --overwrite to replace it.")
    video_options = (
        {}
        if unit.task != "video"
        else dict(short_side=short_side, max_frames=max_frames, num_workers=num_workers)
    )
    os.makedirs(data_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix=f".{name}.incomplete-", dir=data_dir)
    tfds.display_progress_bar(progress)
    try:
        try:
            build(name, manual_dir, work_dir, num_shards=num_shards, **video_options)
        except AssertionError as error:  # tfds's own checks, e.g. more shards than examples
            raise ValueError(f"tfds could not write {name}: {error}") from error
        if os.path.exists(final_dir):
            shutil.rmtree(final_dir)
        os.rename(os.path.join(work_dir, name), final_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    written = sources.builder_dir(data_dir, name)
    _report(dict(tfds.builder_from_directory(written).info.metadata), name, log)
    log(f"written to {written}")
    return final_dir


def _report(metadata: dict, name: str, log) -> None:
    for split, info in metadata["splits"].items():
        log(f"{name}/{split}: {info['num_examples']} examples")
        if info.get("out_of_range_pixels"):
            log(
                f"  warning: {info['out_of_range_pixels']} pixels in {info['out_of_range_images']} "
                f"images had labels outside the class range and were set to 255 (ignore), e.g. "
                f"{info['out_of_range_examples'][:5]}"
            )
        if "num_annotations" in info:  # detection
            log(
                f"  {info['num_annotations']} annotations ({info['num_crowd']} crowd); "
                f"{len(info['indices_without_annotations'])} images without annotations (kept)"
            )
        if info.get("malformed_polygons"):
            log(
                f"  warning: {info['malformed_polygons']} malformed polygons (odd length or fewer "
                f"than 3 points) were dropped, from annotations e.g. "
                f"{info['malformed_polygon_annotation_ids'][:5]}; {info['skipped_annotations']} "
                f"annotations had no valid polygon left and were skipped, e.g. "
                f"{info['skipped_annotation_ids'][:5]}"
            )
    if "category_ids" in metadata:
        log(
            f"{name}: {len(metadata['category_ids'])} categories; label k is category id "
            "category_ids[k] of metadata.json"
        )


def main(argv=None) -> int:
    """Deprecated (one release, CHANGELOG.md): the command is `dnl_jax.cli.prepare.main`."""
    import importlib

    return importlib.import_module("dnl_jax.cli.prepare").main(argv)


# The old command path, python -m dnl_jax.data.prepare:
if __name__ == "__main__":
    import runpy

    runpy.run_module("dnl_jax.cli.prepare", run_name="__main__", alter_sys=True)
