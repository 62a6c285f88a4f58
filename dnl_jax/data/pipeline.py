"""Input pipelines on grain: deterministic, sharded per host, resumable.

Training: the source is shuffled (a new permutation every epoch, from the seed) and repeated
forever; the global stream of examples is cut into host-sized chunks of `local_batch` examples
and host p of P takes chunks p, p+P, p+2P, ... So the global batch at step t, the concatenation
of the hosts' batches in process order, is the same examples whatever P is: one host with batch
B sees exactly what two hosts with B/2 each see together. The iterator's state (a position) is
what the checkpoint stores (`grain.checkpoint.CheckpointSave`).

Prepared datasets (cityscapes, ade20k, pascal_context) are augmented by
`transforms.SegmentationTrainTransform` as a grain RandomMap applied after `.repeat()`: its
per-example generator comes from (seed, position in the repeated stream), so an image is
augmented differently in every epoch while the stream stays a pure function of the position,
which keeps the checkpointed iterator state an exact resume point. Video datasets (task
'classification') are sampled the same way by `transforms.VideoTrainTransform` (a clip of T
frames with a stride, short-side rescale, square crop, flip).

Evaluation batches (`eval_batches`, for dnl_jax/evaluators/batched.py): host p reads examples
p, p+P, ...; every host runs the same number of batches (the collectives need it) and short
batches are padded with a label the metrics ignore (255 for pixels, -1 for clips).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator, Optional

import grain
from absl import flags
import ml_collections
import numpy as np

from dnl_jax import IGNORE_LABEL
from dnl_jax.data import coco, detection_transforms, transforms
from dnl_jax.data.sources import Subset, load_split
from dnl_jax.data.regions import RegionScenes
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.data.synthetic_detection import SyntheticDetection

# Prepared segmentation datasets (python -m dnl_jax.data.prepare NAME ...) the trainer reads.
REAL_SEGMENTATION = ("cityscapes", "ade20k", "pascal_context")
SEGMENTATION_DATASETS = ("synthetic",) + REAL_SEGMENTATION
# Prepared action-recognition datasets (Kinetics layout).
VIDEO_DATASETS = ("kinetics",)
# Detection datasets (task 'detection'): the embedded synthetic detection scenes, COCO 2017.
DETECTION_DATASETS = ("synthetic_detection", "coco")
SYNTHETIC_DATASETS = ("synthetic", "synthetic_detection")  # drawn, not prepared
DATASETS = SEGMENTATION_DATASETS + VIDEO_DATASETS + DETECTION_DATASETS
AUGMENT_THREADS = 4  # batches of a prepared dataset augmented ahead of the step, in parallel


def dataset_task(name: str) -> str:
    """'classification' for the video datasets, 'detection' for the detection ones, else
    'segmentation' (the model's task must match)."""
    if name in VIDEO_DATASETS:
        return "classification"
    return "detection" if name in DETECTION_DATASETS else "segmentation"


def make_sources(data: ml_collections.ConfigDict):
    """(train, val) random-access sources for `config.data`: the synthetic scenes, or the
    prepared splits of data.name under data.data_dir (val with names, for predictions)."""
    if data.name == "synthetic_detection":
        common = dict(image_size=data.image_size, num_colours=data.num_classes // 2,
                      seed=data.seed, noise=data.noise)
        return (SyntheticDetection(data.num_train, split="train", **common),
                SyntheticDetection(data.num_val, split="val", **common))
    if data.name != "synthetic":
        return _prepared_sources(data)
    common = dict(image_size=data.image_size, num_classes=data.num_classes, seed=data.seed,
                  noise=data.noise, ignore_fraction=data.ignore_fraction)
    source = RegionScenes if data.scenes == "regions" else SyntheticSegmentation
    return (source(data.num_train, split="train", **common),
            source(data.num_val, split="val", **common))


def eval_source(data: ml_collections.ConfigDict, split: str):
    """The random-access source of `split` for evaluation: the synthetic scenes ('val' only:
    the trainer's val scenes), or the prepared split with names (for prediction files)."""
    if data.name in SYNTHETIC_DATASETS:
        if split != "val":
            raise ValueError(f"split {split!r}: the synthetic scenes have a 'val' split only.")
        return make_sources(data)[1]
    if data.name in DETECTION_DATASETS:
        return DetectionEvalSource(_prepared_split(data, split), scale=data.base_size,
                                   canvas=data.canvas)
    return _prepared_split(data, split, with_names=True)


def _prepared_split(data: ml_collections.ConfigDict, split: str, *, with_names: bool = False):
    if not os.path.isdir(data.data_dir):
        raise ValueError(
            f"config.data.data_dir={data.data_dir!r} does not exist; prepare the dataset first: "
            f"python -m dnl_jax.data.prepare {data.name} --manual_dir RAW "
            f"--data_dir {data.data_dir} (or point --config.data.data_dir at it).")
    return load_split(data.name, split, data.data_dir, with_names=with_names)


class DetectionEvalSource:
    """A prepared detection split as evaluation inputs: example i is the eval preprocess
    (resize keep-ratio to `scale`, normalise, pad to `canvas`) of the raw example i, and
    `coco_ground_truth()` the split's COCO ground truth at the original sizes (for
    evaluators/coco.py)."""

    def __init__(self, raw, *, scale, canvas):
        self.raw, self.scale, self.canvas = raw, tuple(scale), tuple(canvas)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict:
        return detection_transforms.detection_eval_preprocess(
            self.raw[index], scale=self.scale, canvas=self.canvas)

    def coco_ground_truth(self) -> tuple[dict, list[int]]:
        return coco.coco_ground_truth(self.raw)


def _detection_sources(data: ml_collections.ConfigDict):
    """COCO: the training split (mmdet's filter_empty_gt / min_size 32 filter when
    data.filter_empty_gt) and the val split as evaluation inputs."""
    train, val = _prepared_split(data, "train"), _prepared_split(data, "val")
    _check_num_classes(data, train)
    if data.filter_empty_gt:
        train = Subset(train, coco.train_indices(train))
    return train, DetectionEvalSource(val, scale=data.base_size, canvas=data.canvas)


def _check_num_classes(data: ml_collections.ConfigDict, source) -> None:
    if len(source.classes) != data.num_classes:
        raise ValueError(f"config.data.num_classes={data.num_classes} but {data.name} has "
                         f"{len(source.classes)} classes; set --config.data.num_classes="
                         f"{len(source.classes)}.")


def _prepared_sources(data: ml_collections.ConfigDict):
    if data.name in DETECTION_DATASETS:
        return _detection_sources(data)
    train, val = _prepared_split(data, "train"), _prepared_split(data, "val")
    _check_num_classes(data, train)
    return train, val


def example_shape(data: ml_collections.ConfigDict, task: str) -> tuple[int, ...]:
    """Shape of one training input: images (h, w, 3) = data.crop_size (the synthetic
    data.image_size), clips (data.clip_len, c, c, 3) with c the square data.crop_size."""
    if task == "classification":
        return (int(data.clip_len), *(int(v) for v in data.crop_size), 3)
    if data.name in SYNTHETIC_DATASETS:
        return data.image_size, data.image_size, 3
    if data.name in DETECTION_DATASETS:
        return (*(int(v) for v in data.canvas), 3)
    return (*(int(v) for v in data.crop_size), 3)


def train_transform(data: ml_collections.ConfigDict,
                    task: str = "segmentation") -> Optional[grain.transforms.RandomMap]:
    """The training augmentation of `config.data` for the model's `task` (None for the
    synthetic scenes, which are drawn already normalised at their final size, padded ground
    truth included)."""
    if task == "classification":
        return transforms.VideoTrainTransform(
            clip_len=int(data.clip_len), stride=int(data.frame_stride),
            crop_size=int(data.crop_size[0]),
            short_side_range=tuple(int(v) for v in data.short_side_range))
    if data.name in SYNTHETIC_DATASETS:
        return None
    if data.name in DETECTION_DATASETS:
        return detection_transforms.DetectionTrainTransform(
            scale=tuple(data.base_size), canvas=tuple(data.canvas),
            max_instances=int(data.max_instances), mask_crop_size=int(data.mask_crop_size))
    return transforms.SegmentationTrainTransform(
        crop_size=tuple(data.crop_size), base_size=tuple(data.base_size),
        ratio_range=tuple(data.ratio_range), cat_max_ratio=float(data.cat_max_ratio))


class ClassLabelCheck:
    """`batch -> batch`, raising ValueError when a class label is outside [0, num_classes):
    such labels are refused, never clipped (clipping trains them as the first or last class).
    The message gives their count and the first distinct values."""

    def __init__(self, num_classes: int, what: str):
        self.num_classes, self.what = int(num_classes), what

    def __call__(self, batch: dict) -> dict:
        labels = np.asarray(batch["label"]).reshape(-1)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            examples = ", ".join(str(v) for v in sorted(set(bad.tolist()))[:10])
            raise ValueError(
                f"{bad.size} of {labels.size} {self.what} have class labels outside "
                f"[0, {self.num_classes}) (values: {examples}); they are refused, never "
                f"clipped. Set config.data.num_classes to the dataset's number of classes, or "
                "fix the labels and prepare the dataset again.")
        return batch


def label_check(data: ml_collections.ConfigDict, task: str, what: str
                ) -> Optional[ClassLabelCheck]:
    """The class-label range check of classification data (None for other tasks, whose label
    maps have an ignore label and are counted by the loss instead)."""
    return ClassLabelCheck(data.num_classes, what) if task == "classification" else None


def worker_settings(data: ml_collections.ConfigDict) -> dict:
    """`train_dataset`'s worker kwargs from `config.data` (worker_processes, worker_threads)."""
    return {"worker_processes": int(data.worker_processes),
            "worker_threads": int(data.worker_threads)}


def train_dataset(source, *, seed: int, local_batch: int, process_index: int,
                  process_count: int,
                  transform: Optional[grain.transforms.RandomMap] = None,
                  worker_processes: int = 0,
                  worker_threads: int = AUGMENT_THREADS,
                  check: Optional[Callable[[dict], dict]] = None) -> grain.IterDataset:
    """Infinite per-host batches `{'image': [b, ...], 'label': [b, ...]}` (b = local_batch).

    `transform` (a RandomMap, e.g. `train_transform(config.data)`) is applied to the shuffled,
    repeated stream, so every epoch draws new augmentations (module docstring). With a transform,
    `worker_threads` threads in each process augment batches ahead of the step and, when
    `worker_processes` > 0, that many grain worker processes (multiprocessing prefetch) do so
    in parallel, past the one Python interpreter's lock; the batches are the same either way.
    Iterate with `iter(...)`; the iterator has `get_state()`/`set_state()`. `check` (e.g.
    `label_check(...)`) sees every batch and raises on bad data.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    if worker_processes < 0 or worker_threads < 0:
        raise ValueError(f"config.data.worker_processes={worker_processes} and "
                         f"config.data.worker_threads={worker_threads} must be >= 0 (0 processes:"
                         " augment in this process; 0 threads: no read-ahead).")
    stream = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    if transform is not None:
        stream = stream.random_map(transform, seed=seed)
    chunks = stream.batch(local_batch, drop_remainder=True)
    if check is not None:
        chunks = chunks.map(check)
    # Synthetic: no threads, examples are cheap to draw and the cores are better spent on the
    # step. Augmenting decoded photographs is not cheap: threads (and worker processes, if
    # asked) prepare the next batches (a small buffer: each is a whole batch). Either way the
    # state is the next chunk's index.
    threads = 0 if transform is None else worker_threads
    dataset = chunks[process_index::process_count].to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
    if transform is not None and worker_processes > 0:
        # grain's workers read absl flags; outside an absl app (tests, notebooks) nobody parsed
        # them, so take their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_processes, per_worker_buffer_size=2))
    return dataset


def num_eval_batches(num_examples: int, *, local_batch: int, process_count: int) -> int:
    """Batches every host runs to cover its ceil(N / P) examples."""
    return math.ceil(math.ceil(num_examples / process_count) / local_batch)


def eval_batches(source, *, local_batch: int, process_index: int, process_count: int,
                 preprocess=None, pad_label: int = IGNORE_LABEL, check=None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """This host's evaluation batches of `preprocess(example)` (identity if None), padded to
    `local_batch` with zero inputs labelled `pad_label` (a label the metrics do not count: the
    model bundle's `pad_label`); `check` (e.g. `label_check(...)`) sees each batch before its
    padding."""
    shard = grain.MapDataset.source(source)[process_index::process_count]
    if preprocess is not None:
        shard = shard.map(preprocess)
    steps = num_eval_batches(len(source), local_batch=local_batch, process_count=process_count)
    template = preprocess(source[0]) if preprocess else source[0]  # shapes of the padding
    for step in range(steps):
        indices = range(step * local_batch, min((step + 1) * local_batch, len(shard)))
        examples = [shard[i] for i in indices]
        if check is not None and examples:
            check({"label": np.stack([np.asarray(e["label"]) for e in examples])})
        yield _pad_batch(examples, local_batch, template=template, pad_label=pad_label)


def _pad_batch(examples: list[dict], size: int, *, template: dict,
               pad_label: int) -> dict[str, np.ndarray]:
    """Stacks `examples` and pads to `size` with zero inputs labelled `pad_label`."""
    pad = size - len(examples)
    filler = {key: np.zeros_like(value) for key, value in template.items()}
    filler["label"] = np.full_like(template["label"], pad_label)
    examples = examples + [filler] * pad
    return {key: np.stack([ex[key] for ex in examples]) for key in template}
