"""Adding a dataset is one `Dataset` line in the registry (data/datasets.py): a toy dataset of
images with label maps, served by its own in-memory source, is found by its task, checked,
trained on with the segmentation task's image pipeline and evaluated per image, with its
predictions written in its own submission format; `prepare` and the tasks read one registry."""

import numpy as np
from train_testing import enable_compilation_cache

from dnl_jax import evaluators, tasks
from dnl_jax.data import builders, datasets, prepare
from dnl_jax.train.config import base_config, validate_config
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()

CLASSES = ("background", "square", "disc")


class ToySquares:
    """`count` images of varying sizes: a bright square (class 1) and a dark disc (class 2) on a
    grey background, labels 255 on a one-pixel frame (random access, with names on request)."""

    classes = CLASSES

    def __init__(self, count: int, seed: int, with_names: bool):
        self.count, self.seed, self.with_names = count, seed, with_names

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, index))
        height, width = int(rng.integers(36, 52)), int(rng.integers(36, 52))
        label = np.zeros((height, width), np.uint8)
        top, left = int(rng.integers(0, height - 12)), int(rng.integers(0, width - 12))
        label[top : top + 10, left : left + 10] = 1
        rows, cols = np.ogrid[:height, :width]
        label[(rows - height // 2) ** 2 + (cols - width // 3) ** 2 < 25] = 2
        image = np.stack([np.choose(label, [128, 250, 10]).astype(np.uint8)] * 3, -1)
        label[0, :] = label[-1, :] = label[:, 0] = label[:, -1] = 255
        example = {"image": image, "label": label}
        if self.with_names:
            example["name"] = f"toy{index:03d}"
        return example


def _open_split(data, split: str, *, with_names: bool = False):
    return ToySquares(8 if split == "train" else 3, {"train": 0, "val": 1}[split], with_names)


TOY = datasets.Dataset(
    "toy_squares",
    "segmentation",
    classes=CLASSES,
    open_split=_open_split,
    submission_ids=lambda prediction: prediction * 100,
    prediction_suffix="_pred",
)


def test_a_toy_dataset_is_one_registry_line(monkeypatch, tmp_path):
    monkeypatch.setitem(datasets.DATASETS, TOY.name, TOY)  # the one line
    config = base_config()
    config.update_from_flattened_dict(
        {
            "model.name": "dnl_tiny",
            "progress_bar": False,
            "curves_figure": False,
            "attention_figure": False,
            "checkpoint.every_steps": 2,
            "data.name": "toy_squares",
            "data.num_classes": 3,
            "data.segmentation.crop_size": (32, 32),
            "data.segmentation.base_size": (48, 32),
            "model.from_scratch": True,
            "batch_size": 4,
            "total_steps": 2,
        }
    )
    with config.unlocked():
        config.evals.val = evaluators.section("segmentation", every_steps=0)
    built = tasks.build(config)
    assert built.task is tasks.TASKS["segmentation"] and "toy_squares" in built.task.datasets
    assert built.example_shape == (32, 32, 3)
    validate_config(config, built.task, num_devices=1, num_processes=1)
    assert tasks.applicable(config, built.task).data.to_dict().keys() >= {"segmentation"}

    result = train_and_evaluate(config, str(tmp_path / "run"))
    assert result["status"] == "completed" and result["step"] == 2
    assert result["val"]["per_class_iou"].shape == (3,)

    inputs = built.task.eval_inputs(config.data)
    assert inputs.kind == "images" and inputs.base_size == (48, 32)
    written = inputs.write_prediction(np.array([[0, 1], [2, 1]], np.uint8), "toy000", str(tmp_path))
    assert written.endswith("toy000_pred.png")


def test_prepare_and_the_tasks_share_the_registry():
    prepared = {name for name, dataset in datasets.DATASETS.items() if dataset.prepared}
    assert set(prepare.DATASETS) == prepared == set(builders.BUILDERS)
    by_tasks = {name for task in tasks.TASKS.values() for name in task.datasets}
    assert by_tasks == set(datasets.DATASETS)
    assert datasets.get("ucf101").val_split == "test"
    assert datasets.get("cityscapes").prediction_png_name("a_b_c") == "a_b_c_leftImg8bit.png"
