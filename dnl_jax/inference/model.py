"""The model of a preprocessing record, and its checkpoint's variables checked against it.

`build_module` is the ONE place where inference builds a Flax model: a registry model through
the one build path (`dnl_jax.tasks.build`), or a converted checkpoint's architecture
(`build_segmentor`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.inference.record import PreprocessingRecord
from dnl_jax.models.registry import parameter_mismatch
from dnl_jax.models.segmentor import build_segmentor
from dnl_jax.tasks import build
from dnl_jax.train import checkpoint as ckpt
from dnl_jax.train.config import base_config

# A dataset of each task, for the trainer's model/dataset check when the record names none.
_TASK_DATASET = {"segmentation": "cityscapes", "video": "kinetics", "detection": "coco"}


def _config_of(record: PreprocessingRecord):
    config = base_config()
    config.model.name = record.model
    config.data.num_classes = record.num_classes
    config.data.name = record.dataset or _TASK_DATASET[record.task]
    kwargs = dict(record.model_kwargs)
    dtype = kwargs.pop("dtype", None)
    config.model.dtype = dtype or "float32"
    config.model.kwargs.update(kwargs)
    return config


def build_module(record: PreprocessingRecord):
    """The Flax module of `record` (inference: no pmap axis). ValueError for a model that is
    not of the record's task or options the model does not take."""
    if record.architecture is not None:
        return build_segmentor(**record.architecture)
    return build(_config_of(record)).module


def expected_variables(module, record: PreprocessingRecord) -> dict:
    """Shapes of the module's {'params', 'batch_stats'} (training parts, e.g. the auxiliary
    head, included: checkpoints hold them)."""
    side = 8 * record.output_stride
    shape = (1, side, side, 3)
    key = jax.random.key(0)
    shapes = jax.eval_shape(
        lambda: module.init({"params": key, "dropout": key}, jnp.zeros(shape), train=True)
    )
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def load_checked(step_dir: str, module, record: PreprocessingRecord) -> dict:
    """{'params', 'batch_stats'} of checkpoint step `step_dir`, checked against the module;
    ValueError (one line) when unreadable or not this model's."""
    try:
        variables = ckpt.load_variables(step_dir)
    except ValueError:
        raise
    except Exception as error:  # orbax's errors on damaged files, as one line
        raise ValueError(
            f"--checkpoint={step_dir} could not be read ({type(error).__name__}); give a "
            "complete checkpoint step directory."
        ) from None
    if record.task != "segmentation":  # other tasks' models fail at their first call instead
        return jax.tree.map(np.asarray, variables)
    expected = expected_variables(module, record)
    mismatch = parameter_mismatch(variables["params"], expected["params"])
    if mismatch:
        raise ValueError(
            f"--checkpoint={step_dir} does not fit its record's model {record.model!r} "
            f"({record.task}, {record.num_classes} classes): {mismatch}."
        )
    return jax.tree.map(np.asarray, variables)


__all__ = ["build_module", "expected_variables", "load_checked"]
