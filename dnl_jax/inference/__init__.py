"""Inference on the user's own data: a checkpoint (or an exported model) and its preprocessing
record applied to image files, with the non-local blocks' attention maps (`--explain`).

    from dnl_jax.inference import Predictor
    predictor = Predictor.from_checkpoint('runs/demo-latest/checkpoints')
    labels = predictor.predict('photo.png').labels

Modules: record (the preprocessing record), classes (names, colours, written ids), files (inputs,
atomic outputs), model (the one build path), predictor, explain, figures, export.
The names below are imported on first use: the trainer imports `inference.record` to write the
record, and must not pull in the predictor (which builds models through the trainer).
"""

import importlib

_EXPORTS = {
    "Predictor": "predictor",
    "SegmentationResult": "predictor",
    "PreprocessingRecord": "record",
    "RECORD_FILE": "record",
    "find_record": "record",
    "record_from_config": "record",
    "write_record": "record",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dnl_jax.inference.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dnl_jax.inference' has no attribute {name!r}")


__all__ = list(_EXPORTS)
