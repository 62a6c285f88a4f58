"""Input pipelines on grain: deterministic, sharded per host, resumable.

Training: the source is shuffled (a new permutation every epoch, from the seed) and repeated
forever; the global stream of examples is cut into host-sized chunks of `local_batch` examples
and host p of P takes chunks p, p+P, p+2P, ... So the global batch at step t, the concatenation
of the hosts' batches in process order, is the same examples whatever P is: one host with batch
B sees exactly what two hosts with B/2 each see together. The iterator's state (a position) is
what the checkpoint stores (`grain.checkpoint.CheckpointSave`).

Prepared datasets are augmented by their task's training transform (dnl_jax/tasks/: e.g.
`transforms.SegmentationTrainTransform`, `transforms.VideoTrainTransform`) as a grain RandomMap
applied after `.repeat()`: its per-example generator comes from (seed, position in the repeated
stream), so an example is augmented differently in every epoch while the stream stays a pure
function of the position, which keeps the checkpointed iterator state an exact resume point.
Which sources, transform and input shape a dataset has is its task's knowledge (dnl_jax/tasks/);
this module holds what every task shares.

Evaluation batches (`eval_batches`, for dnl_jax/evaluators/batched.py): host p reads examples
p, p+P, ...; every host runs the same number of batches (the collectives need it) and short
batches are padded with a label the metrics ignore (255 for pixels, -1 for clips).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import grain
import ml_collections
import numpy as np
from absl import flags

from dnl_jax import IGNORE_LABEL
from dnl_jax.data.sources import load_split

AUGMENT_THREADS = 4  # batches of a prepared dataset augmented ahead of the step, in parallel


def prepared_split(data: ml_collections.ConfigDict, split: str, *, with_names: bool = False):
    """The prepared `split` of data.name under data.data_dir (ValueError with the prepare
    command when the directory is missing)."""
    if not os.path.isdir(data.data_dir):
        raise ValueError(
            f"config.data.data_dir={data.data_dir!r} does not exist; prepare the dataset first: "
            f"python -m dnl_jax.cli.prepare {data.name} --manual_dir RAW "
            f"--data_dir {data.data_dir} (or point --config.data.data_dir at it)."
        )
    return load_split(data.name, split, data.data_dir, with_names=with_names)


def synthetic_val(sources, split: str):
    """The val scenes of `(train, val)` drawn scenes for evaluating `split` ('val' only: the
    trainer's val scenes)."""
    if split != "val":
        raise ValueError(f"split {split!r}: the synthetic scenes have a 'val' split only.")
    return sources[1]


def first_examples(source, count: int, preprocess=None) -> list[dict]:
    """`preprocess` (identity if None) of the first `count` examples of `source`. Scenes that know
    their salient keys (`source.salient_map(index)`) add them to each example as 'salient'."""
    examples = [source[i] for i in range(min(count, len(source)))]
    if hasattr(source, "salient_map"):
        examples = [
            {**example, "salient": source.salient_map(i)} for i, example in enumerate(examples)
        ]
    return examples if preprocess is None else [preprocess(example) for example in examples]


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
                "fix the labels and prepare the dataset again."
            )
        return batch


def worker_settings(data: ml_collections.ConfigDict) -> dict:
    """`train_dataset`'s worker kwargs from `config.data` (worker_processes, worker_threads)."""
    return {
        "worker_processes": int(data.worker_processes),
        "worker_threads": int(data.worker_threads),
    }


def train_dataset(
    source,
    *,
    seed: int,
    local_batch: int,
    process_index: int,
    process_count: int,
    transform: grain.transforms.RandomMap | None = None,
    worker_processes: int = 0,
    worker_threads: int = AUGMENT_THREADS,
    check: Callable[[dict], dict] | None = None,
) -> grain.IterDataset:
    """Infinite per-host batches `{'image': [b, ...], 'label': [b, ...]}` (b = local_batch).

    `transform` (a RandomMap: the task's `train_transform(config.data)`) is applied to the shuffled,
    repeated stream, so every epoch draws new augmentations (module docstring). With a transform,
    `worker_threads` threads in each process augment batches ahead of the step and, when
    `worker_processes` > 0, that many grain worker processes (multiprocessing prefetch) do so
    in parallel, past the one Python interpreter's lock; the batches are the same either way.
    Iterate with `iter(...)`; the iterator has `get_state()`/`set_state()`. `check` (e.g.
    `Task.label_check(...)`) sees every batch and raises on bad data.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    if worker_processes < 0 or worker_threads < 0:
        raise ValueError(
            f"config.data.worker_processes={worker_processes} and "
            f"config.data.worker_threads={worker_threads} must be >= 0 (0 processes:"
            " augment in this process; 0 threads: no read-ahead)."
        )
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
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
    )
    if transform is not None and worker_processes > 0:
        # grain's workers read absl flags; outside an absl app (tests, notebooks) nobody parsed
        # them, so take their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_processes, per_worker_buffer_size=2)
        )
    return dataset


def num_eval_batches(num_examples: int, *, local_batch: int, process_count: int) -> int:
    """Batches every host runs to cover its ceil(N / P) examples."""
    return math.ceil(math.ceil(num_examples / process_count) / local_batch)


def eval_batches(
    source,
    *,
    local_batch: int,
    process_index: int,
    process_count: int,
    preprocess=None,
    pad_label: int = IGNORE_LABEL,
    check=None,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's evaluation batches of `preprocess(example)` (identity if None), padded to
    `local_batch` with zero inputs labelled `pad_label` (a label the metrics do not count: the
    model bundle's `pad_label`); `check` (e.g. `Task.label_check(...)`) sees each batch before its
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


def _pad_batch(
    examples: list[dict], size: int, *, template: dict, pad_label: int
) -> dict[str, np.ndarray]:
    """Stacks `examples` and pads to `size` with zero inputs labelled `pad_label`."""
    pad = size - len(examples)
    filler = {key: np.zeros_like(value) for key, value in template.items()}
    filler["label"] = np.full_like(template["label"], pad_label)
    examples = examples + [filler] * pad
    return {key: np.stack([ex[key] for ex in examples]) for key in template}
