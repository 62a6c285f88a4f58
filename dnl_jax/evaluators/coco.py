"""COCO box and mask AP (`type='coco'`): the detector's predictions on the val split, scored by
pycocotools' `COCOeval` (evaluators/coco_eval.py), and written as a standard COCO results
JSON.

    config.evals.val = dict(type='coco', every_steps=0, batch_size=8,
                            iou_types=('bbox', 'segm'), write_results=True)

Each host predicts its examples (p, p+P, ...) on one local device in batches of
batch_size / P, padded to the same number of batches on every host; the fixed-size predictions
(boxes, scores, labels, valid flags and 28 × 28 mask probabilities of `max_detections` per image)
are gathered from all hosts, so every host scores the whole split and gets the same metrics.
Boxes are mapped back to the original image by the example's `scale_factor` (resized /
original, per axis; 1 when absent) and the masks pasted at its `orig_size` (else `image_size`),
as mmdet rescales before its COCO metric.

Ground truth: the source's own `coco_ground_truth()` → (COCO dataset dict, category ids) when it
has one (a prepared COCO split, with the original annotations: crowd regions, category ids), else
built from the examples' padded `gt_*` arrays with category ids 1..K (the synthetic scenes).
Metrics: `bbox_AP`, `bbox_AP50`, ..., `segm_AP`, ... (COCOeval's 12 statistics per IoU type);
`bbox_AP` ranks checkpoints (the bundle's best_metric).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from dnl_jax.data import pipeline
from dnl_jax.evaluators import coco_eval, common

log = logging.getLogger(__name__)

# What one prediction row keeps (per image): the detector's outputs and the image geometry.
_OUTPUT_KEYS = ("boxes", "scores", "labels", "valid", "masks")


def synthetic_ground_truth(source) -> tuple[dict, list[int]]:
    """(COCO dataset dict, category ids 1..K) from a source whose examples carry padded
    ground truth (`gt_boxes`, `gt_labels`, `gt_valid`, `gt_masks`, `image_size`, `image_id`)."""
    images = []
    for index in range(len(source)):
        example = source[index]
        valid = np.asarray(example["gt_valid"], bool)
        height, width = (int(v) for v in np.asarray(example["image_size"]))
        images.append(
            {
                "id": int(example["image_id"]),
                "height": height,
                "width": width,
                "boxes": np.asarray(example["gt_boxes"])[valid],
                "labels": np.asarray(example["gt_labels"])[valid],
                "masks": np.asarray(example["gt_masks"])[valid, :height, :width],
            }
        )
    category_ids = list(range(1, int(source.num_classes) + 1))
    return coco_eval.ground_truth_dataset(images, category_ids), category_ids


def _geometry(example: dict) -> dict:
    """image_id, scale_factor (h, w) and orig_size (h, w) of an example."""
    size = np.asarray(example["image_size"], np.float32)
    scale = np.asarray(example.get("scale_factor", (1.0, 1.0)), np.float32)
    orig = np.asarray(example.get("orig_size", np.round(size / scale)), np.int32)
    return {"image_id": np.int32(example["image_id"]), "scale_factor": scale, "orig_size": orig}


def rows_to_results(rows: dict, category_ids, mask_threshold: float = 0.5) -> list[dict]:
    """Gathered prediction rows (`_OUTPUT_KEYS` + geometry, padding rows have image_id < 0) →
    COCO results entries at the original image size."""
    keep = rows["image_id"] >= 0
    rows = {key: value[keep] for key, value in rows.items()}
    scale = rows["scale_factor"]  # (h, w) per row
    per_coordinate = np.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], -1)
    outputs = {key: rows[key] for key in _OUTPUT_KEYS if key in rows}
    if "masks" in outputs:
        outputs["masks"] = outputs["masks"].astype(np.float32)
    outputs["boxes"] = rows["boxes"] / per_coordinate[:, None, :]
    return coco_eval.model_results(
        outputs,
        rows["image_id"].tolist(),
        rows["orig_size"],
        category_ids,
        mask_threshold=mask_threshold,
    )


class CocoEvaluator(common.Evaluator):
    """COCO AP of the detector (module docstring)."""

    KEYS = {
        "every_steps": 0,
        "batch_size": 8,
        "iou_types": coco_eval.IOU_TYPES,
        "write_results": True,
        "mask_threshold": 0.5,
    }
    INPUTS = ("detection",)

    @classmethod
    def check(
        cls, name: str, settings: dict, inputs, *, num_devices: int, num_processes: int
    ) -> None:
        super().check(name, settings, inputs, num_devices=num_devices, num_processes=num_processes)
        where = f"config.evals.{name}"
        batch = settings["batch_size"]
        if not isinstance(batch, int) or batch < 1 or batch % num_processes:
            raise ValueError(
                f"{where}.batch_size={batch!r} must be a positive multiple of the "
                f"{num_processes} hosts."
            )
        iou_types = tuple(settings["iou_types"])
        if not iou_types or set(iou_types) - set(coco_eval.IOU_TYPES):
            raise ValueError(f"{where}.iou_types={iou_types}; choose from {coco_eval.IOU_TYPES}.")
        if not 0 < settings["mask_threshold"] < 1:
            raise ValueError(f"{where}.mask_threshold must be in (0, 1).")

    def __init__(self, name, context, settings):
        super().__init__(name, context, settings)
        self._ground_truth: tuple[dict, list[int]] | None = None

    def ground_truth(self) -> tuple[dict, list[int]]:
        """(COCO dataset dict, category ids), built once."""
        if self._ground_truth is None:
            source = self.context.source
            if hasattr(source, "coco_ground_truth"):
                self._ground_truth = source.coco_ground_truth()
            else:
                self._ground_truth = synthetic_ground_truth(source)
        return self._ground_truth

    def predict_rows(self, state) -> dict:
        """This host's prediction rows, padded to the same count on every host, gathered."""
        module = self.context.module
        variables = self.context.driver.host_variables(state)
        predict = jax.jit(lambda v, image, size: module.apply(v, image, size, train=False))
        source, hosts = self.context.source, jax.process_count()
        local_batch = self.settings["batch_size"] // hosts
        steps = pipeline.num_eval_batches(len(source), local_batch=local_batch, process_count=hosts)
        indices = range(jax.process_index(), len(source), hosts)  # this host's examples
        chunks = []
        for step in range(steps):  # examples are read a batch at a time
            batch = [source[i] for i in indices[step * local_batch : (step + 1) * local_batch]]
            count = len(batch)
            batch = batch + [batch[0] if batch else source[0]] * (local_batch - count)
            outputs = predict(
                variables,
                np.stack([e["image"] for e in batch]),
                np.stack([np.asarray(e["image_size"], np.float32) for e in batch]),
            )
            rows = {key: np.asarray(outputs[key]) for key in _OUTPUT_KEYS}
            rows["masks"] = rows["masks"].astype(np.float16)  # probabilities; halves host memory
            geometry = [_geometry(e) for e in batch]
            rows.update({key: np.stack([g[key] for g in geometry]) for key in geometry[0]})
            rows["image_id"][count:] = -1  # padding
            chunks.append(rows)
        local = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
        if hosts == 1:
            return local
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(local)
        return {
            key: np.asarray(value).reshape((-1,) + value.shape[2:])
            for key, value in gathered.items()
        }

    def results_path(self) -> str | None:
        """Where the results JSON goes: the context's output_dir (the evaluate command), else
        the run's workdir/predictions, else nowhere."""
        directory = self.context.output_dir or (
            os.path.join(self.context.workdir, "predictions") if self.context.workdir else None
        )
        if not self.settings["write_results"] or directory is None:
            return None
        return os.path.join(directory, f"{self.name}_coco_results.json")

    def run(self, state) -> dict:
        dataset, category_ids = self.ground_truth()
        results = rows_to_results(
            self.predict_rows(state), category_ids, self.settings["mask_threshold"]
        )
        path = self.results_path()
        if path is not None and jax.process_index() == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            coco_eval.write_results(results, path)
        metrics, _ = coco_eval.evaluate(dataset, results, tuple(self.settings["iou_types"]))
        return self.context.bundle.finalize_metrics(metrics)


__all__ = ["CocoEvaluator", "rows_to_results", "synthetic_ground_truth"]
