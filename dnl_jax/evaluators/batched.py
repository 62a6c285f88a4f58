"""Batched data-parallel evaluation (`type='batched'`): fixed-size val examples in batches of
`batch_size` (global) through the driver's eval step (sharded over every device; the bundle's
metric counts summed over devices and hosts), then the bundle's metric finalisation.

For inputs that are model-ready at one size: the synthetic scenes, and one view per video (the
middle clip, centre crop, short side `short_side`, 0 = the crop side). Host p reads examples p,
p+P, ...; every host runs the same number of batches (the collectives need it) and short batches
are padded with the bundle's `pad_label`, which the metrics do not count.

    config.evals.val = dict(type='batched', every_steps=50, batch_size=32)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dnl_jax.data import pipeline, transforms
from dnl_jax.evaluators import common, video

NONFINITE_KEY = "nonfinite_outputs"  # the eval step's count of NaN / inf outputs (train/step.py)


def one_view(settings: dict):
    """`example -> {'video': [T, c, c, 3] float32, 'label': int32}`: the view of
    `transforms.video_eval_views(**settings)` with one clip and one crop (the middle clip, centre
    crop)."""

    def preprocess(example: dict) -> dict:
        views = transforms.video_eval_views(example, **settings)
        return {"video": views["video"][0], "label": np.int32(example["label"])}

    return preprocess


class BatchedEvaluator(common.Evaluator):
    """Batched evaluation (module docstring); metrics: `bundle.finalize_metrics` of the sums."""

    KEYS = {"every_steps": 50, "batch_size": 32, "short_side": 0}
    INPUTS = ("scenes", "videos")

    @classmethod
    def check(
        cls, name: str, settings: Mapping[str, Any], inputs, *, num_devices: int, num_processes: int
    ) -> None:
        super().check(name, settings, inputs, num_devices=num_devices, num_processes=num_processes)
        batch, devices = settings["batch_size"], num_devices
        if not isinstance(batch, int) or batch < 1 or batch % devices:
            raise ValueError(
                f"config.evals.{name}.batch_size={batch!r} must be a positive "
                f"multiple of the {devices} devices."
            )
        if inputs.kind == "videos":  # one view per video: its short side
            video.check_views(name, settings, ("short_side",))
            inputs.check_short_side(name, settings["short_side"])
        else:
            if settings["short_side"]:
                raise ValueError(f"config.evals.{name}.short_side is for video datasets only.")
            if inputs.num_examples is not None and inputs.num_examples < num_processes:
                raise ValueError(f"{inputs.num_examples_key} must be >= the number of hosts.")

    def run(self, state) -> dict:
        context = self.context
        preprocess = None
        if context.inputs.kind == "videos":
            preprocess = one_view(context.inputs.view_settings(1, 1, self.settings["short_side"]))
        totals = None
        for batch in pipeline.eval_batches(
            context.source,
            local_batch=self.settings["batch_size"] // context.driver.data_process_count,
            process_index=context.driver.data_process_index,
            process_count=context.driver.data_process_count,
            preprocess=preprocess,
            pad_label=context.bundle.pad_label,
            check=context.inputs.label_check,
        ):
            context.between_batches()
            sums = context.driver.eval_step(state, batch)
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        common.check_finite(totals.pop(NONFINITE_KEY, 0))
        return context.bundle.finalize_metrics(totals)
