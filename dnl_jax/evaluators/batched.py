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

import jax
import numpy as np

from dnl_jax import tasks
from dnl_jax.data import pipeline
from dnl_jax.evaluators import common, video
from dnl_jax.tasks.video import check_short_side, one_view_preprocess

NONFINITE_KEY = "nonfinite_outputs"  # the eval step's count of NaN / inf outputs (train/step.py)


class BatchedEvaluator(common.Evaluator):
    """Batched evaluation (module docstring); metrics: `bundle.finalize_metrics` of the sums."""

    KEYS = {"every_steps": 50, "batch_size": 32, "short_side": 0}

    @classmethod
    def check(
        cls, name: str, settings: dict, config, *, num_devices: int, num_processes: int
    ) -> None:
        super().check(name, settings, config, num_devices=num_devices, num_processes=num_processes)
        batch, devices = settings["batch_size"], num_devices
        if not isinstance(batch, int) or batch < 1 or batch % devices:
            raise ValueError(
                f"config.evals.{name}.batch_size={batch!r} must be a positive "
                f"multiple of the {devices} devices."
            )
        task = tasks.for_dataset(config.data.name)  # batched applies: evaluators.check_config
        if task.input_key == "video":  # one view per video: its short side
            video.check_views(name, settings, ("short_side",))
            check_short_side(name, settings["short_side"], config.data)
        else:
            if settings["short_side"]:
                raise ValueError(f"config.evals.{name}.short_side is for video datasets only.")
            if int(config.data.synthetic.num_val) < num_processes:  # drawn scenes
                raise ValueError("config.data.synthetic.num_val must be >= the number of hosts.")

    def run(self, state) -> dict:
        context = self.context
        preprocess = None
        if context.bundle.input_key == "video":
            preprocess = one_view_preprocess(context.config.data, self.settings["short_side"])
        totals = None
        for batch in pipeline.eval_batches(
            context.source,
            local_batch=self.settings["batch_size"] // context.driver.data_process_count,
            process_index=context.driver.data_process_index,
            process_count=context.driver.data_process_count,
            preprocess=preprocess,
            pad_label=context.bundle.pad_label,
            check=tasks.for_dataset(context.config.data.name).label_check(
                context.config.data, "evaluation examples in a batch"
            ),
        ):
            context.between_batches()
            sums = context.driver.eval_step(state, batch)
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        common.check_finite(totals.pop(NONFINITE_KEY, 0))
        return context.bundle.finalize_metrics(totals)
