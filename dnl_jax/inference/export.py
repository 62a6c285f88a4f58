"""Export: a checkpoint as a serialized `jax.export` artifact (StableHLO, weights included) with a
symbolic batch size, and its preprocessing record, in one file.

    python -m dnl_jax.export --checkpoint runs/demo-latest/checkpoints --output model.jaxexport \\
        [--input_size H,W]
    python -m dnl_jax.predict --exported model.jaxexport photo.png --output_dir out/

The file is a zip archive: `exported.bin` (`jax.export.Exported.serialize()`: the model's
inference function, float32 inputs `[b, H, W, 3]` → logits `[b, H, W, K]`, b symbolic),
`preprocessing.json` (the record) and `export.json` (the input size, the JAX version). Running it
needs jax (and flatbuffers) only: no Flax model is built. The spatial size is fixed at export
(`--input_size`, default the record's slide window or fixed size); other sizes go through sliding
windows of that size (`predict --exported ... --mode slide --stride H,W`).
"""

from __future__ import annotations

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

try:  # jax serializes Exported objects with flatbuffers (a dependency of ours, not of jax)
    import flatbuffers  # noqa: F401
except ImportError:  # pragma: no cover - reported when exporting or loading
    flatbuffers = None

from dnl_jax.inference import files
from dnl_jax.inference import model as model_lib
from dnl_jax.inference.record import PreprocessingRecord, find_record
from dnl_jax.train.checkpoint_paths import step_directory

ARTIFACT_MEMBERS = ("exported.bin", "preprocessing.json", "export.json")


def default_input_size(record: PreprocessingRecord) -> tuple[int, int] | None:
    """The record's slide window, or its fixed resize; None when it has neither."""
    if record.inference.get("mode") == "slide" and record.inference.get("crop_size"):
        return tuple(int(v) for v in record.inference["crop_size"])  # type: ignore[return-value]
    if record.resize.get("policy") == "fixed":
        return tuple(int(v) for v in record.resize["size"])  # type: ignore[return-value]
    return None


def export_logits_fn(module, variables, input_size: tuple[int, int]) -> jax_export.Exported:
    """`jax.export` of `module`'s inference logits for `[b, H, W, 3]` float32 inputs, b
    symbolic; the variables become constants of the program."""
    constants = jax.tree.map(jnp.asarray, variables)

    def logits(images):
        return module.apply(constants, images, train=False)["logits"].astype(jnp.float32)

    height, width = input_size
    shape = jax_export.symbolic_shape(f"b, {height}, {width}, 3")
    return jax_export.export(jax.jit(logits))(jax.ShapeDtypeStruct(shape, jnp.float32))


def _check_serializer() -> None:
    if flatbuffers is None:
        raise ValueError(
            "jax.export serialization needs the 'flatbuffers' package; pip install flatbuffers."
        )


def write_artifact(path: str, exported, record: PreprocessingRecord, input_size) -> str:
    """The zip archive of the module docstring, written atomically."""
    _check_serializer()
    meta = {"input_size": list(input_size), "jax_version": jax.__version__, "batch": "symbolic"}

    def write(buffer):
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("exported.bin", bytes(exported.serialize()))
            archive.writestr("preprocessing.json", record.to_json())
            archive.writestr("export.json", json.dumps(meta, indent=1))

    return files.save_atomic(path, write)


def read_artifact(path: str):
    """(Exported, record, input_size) of an artifact; ValueError (one line) when it is not one."""
    _check_serializer()
    try:
        with zipfile.ZipFile(path) as archive:
            blobs = {name: archive.read(name) for name in ARTIFACT_MEMBERS}
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"--exported={path} is not a `python -m dnl_jax.export` artifact "
            f"({type(error).__name__}); export the checkpoint again."
        ) from None
    record = PreprocessingRecord.from_dict(json.loads(blobs["preprocessing.json"]), where=path)
    meta = json.loads(blobs["export.json"])
    exported = jax_export.deserialize(bytearray(blobs["exported.bin"]))
    return exported, record, tuple(int(v) for v in meta["input_size"])


def load_predictor(path: str, predictor_cls):
    """A `Predictor` running the artifact at `path` (no Flax model)."""
    exported, record, input_size = read_artifact(path)

    def logits_fn(images):
        return exported.call(np.asarray(images, np.float32))

    return predictor_cls(record, logits_fn, input_size=input_size)


def export_checkpoint(checkpoint: str, output: str, input_size=None, record=None) -> dict:
    """Exports checkpoint step `checkpoint` to `output`; returns {'path', 'input_size',
    'bytes'}. ValueError when no input size is given or recorded."""
    step_dir = step_directory(checkpoint)
    record = record or find_record(step_dir)
    input_size = tuple(input_size or default_input_size(record) or ())
    if len(input_size) != 2:
        raise ValueError(
            "the checkpoint's record has no fixed input size; pass --input_size H,W (the "
            "size the exported model takes; larger images are slid over with it)."
        )
    if min(input_size) < record.output_stride:
        raise ValueError(
            f"--input_size {input_size[0]},{input_size[1]} is smaller than the model's output "
            f"stride {record.output_stride}."
        )
    module = model_lib.build_module(record)
    variables = model_lib.load_checked(step_dir, module, record)
    exported = export_logits_fn(module, variables, input_size)
    write_artifact(output, exported, record, input_size)
    return {"path": output, "input_size": input_size, "bytes": os.path.getsize(output)}


__all__ = [
    "export_checkpoint",
    "export_logits_fn",
    "write_artifact",
    "read_artifact",
    "load_predictor",
    "default_input_size",
]
