"""The evaluators of dnl_jax/evaluators/ on their own (fake models and drivers, no training):
batched (coverage and padding), per-image segmentation (whole / slide / flip), multi-view video,
their config sections, and the one host predict function (model.dtype honoured)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax import evaluators, tasks
from dnl_jax.data import transforms
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.evaluators import EvalContext, make_predict_fn
from dnl_jax.models import metrics
from dnl_jax.train.config import base_config, validate_config

K = 4


def _bundle(**fields):
    """The parts of a ModelBundle that evaluators read."""
    defaults = dict(
        finalize_metrics=metrics.segmentation_metrics_from_sums, pad_label=255, input_key="image"
    )
    return types.SimpleNamespace(**{**defaults, **fields})


class _FakeModule:
    """`apply(variables, x) -> {'logits': fn(x)}` with a jax-traceable `fn`."""

    def __init__(self, fn):
        self.fn = fn

    def apply(self, variables, inputs, train=False):
        return {"logits": self.fn(inputs)}


class _HostDriver:
    """`eval_step`: numpy confusion of the labels themselves (a perfect model), counting what the
    batched evaluator passes; `host_variables`: no weights."""

    # One host reading every data shard (the drivers' data_process_index / _count).
    data_process_index, data_process_count = 0, 1

    def __init__(self, num_classes):
        self.num_classes, self.labels_seen = num_classes, 0

    def eval_step(self, state, batch):
        label = batch["label"].astype(np.int64).ravel()
        keep = label != 255
        self.labels_seen += int(keep.sum())
        confusion = np.bincount(
            label[keep] * self.num_classes + label[keep], minlength=self.num_classes**2
        )
        return {"confusion": confusion.reshape(self.num_classes, self.num_classes)}

    def host_variables(self, state):
        return {"params": {}, "batch_stats": {}}


def _config(**values):
    config = base_config()
    config.update_from_flattened_dict(values)
    return config


def _build(config, context):
    return {e.name: e for e in evaluators.from_config(config.evals, context)}


def _context(config, bundle, module, source, driver, **fields):
    """The EvalContext of the task of `config.data.name` (its `eval_inputs`)."""
    inputs = tasks.for_dataset(config.data.name).eval_inputs(config.data)
    return EvalContext(bundle, module, source, driver, inputs, **fields)


def test_batched_evaluator_covers_every_example_once_and_ignores_padding():
    config = _config(**{"data.num_classes": 5, "data.synthetic.num_val": 7})
    # 7 examples = 4 + 3 (+1 padded)
    config.evals.val = evaluators.section("batched", every_steps=3, batch_size=4)
    source = SyntheticSegmentation(7, image_size=8, num_classes=5)
    driver = _HostDriver(5)
    val = _build(config, _context(config, _bundle(), None, source, driver))["val"]
    result = val.run(state=None)
    assert driver.labels_seen == 7 * 8 * 8
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0
    assert [val.due(s, final=False) for s in (0, 1, 3, 6)] == [True, False, True, True]


def _colour_coded_examples(rng, count=3, height=6, width=8):
    """Images whose red channel is 40 x the class (one pixel ignored), as raw uint8."""
    examples = []
    for i in range(count):
        label = rng.integers(0, K, (height, width)).astype(np.uint8)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image[..., 0] = label * 40
        label[0, 0] = 255
        examples.append({"image": image, "label": label, "name": f"img{i}"})
    return examples


def _red_oracle(images):
    """Logits from the normalised red channel: argmax = the class it encodes."""
    red = images[..., :1] * transforms.IMAGENET_STD[0] + transforms.IMAGENET_MEAN[0]
    return -((red - 40.0 * jnp.arange(K)) ** 2)


@pytest.mark.parametrize(
    "section",
    [
        evaluators.section("segmentation", every_steps=5),
        evaluators.section(
            "segmentation", every_steps=5, mode="slide", crop_size=(4, 4), stride=(2, 3), flip=True
        ),
    ],
)
def test_segmentation_evaluator_on_a_perfect_model(section, tmp_path):
    config = _config(
        **{"data.name": "cityscapes", "data.num_classes": K, "data.segmentation.base_size": (8, 6)}
    )
    config.evals.val = section
    examples = _colour_coded_examples(np.random.default_rng(0))
    context = _context(
        config,
        _bundle(),
        _FakeModule(_red_oracle),
        examples,
        _HostDriver(K),
        output_dir=str(tmp_path),
    )
    result = _build(config, context)["val"].run(state=None)
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0
    assert result["per_class_iou"].shape == (K,)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [f"img{i}_leftImg8bit.png" for i in range(3)]  # Cityscapes file names


def test_multi_view_evaluator_counts_views_and_videos():
    config = _config(
        **{
            "data.name": "kinetics",
            "model.name": "dnl_i3d_tiny",
            "data.num_classes": 2,
            "data.video.clip_len": 4,
            "data.video.frame_stride": 1,
            "data.video.crop_size": (8, 8),
            "data.video.short_side_range": (8, 10),
            "evals.val.batch_size": 4,
        }
    )
    config.evals.val_multi_view = evaluators.section("multi_view", num_clips=2, num_crops=3)
    rng = np.random.default_rng(1)
    videos = [
        {"video": rng.integers(0, 256, (8, 10, 12, 3), dtype=np.uint8), "label": k} for k in (0, 1)
    ]
    always_zero = _FakeModule(lambda v: jnp.tile(jnp.array([[5.0, 0.0]]), (v.shape[0], 1)))
    context = _context(
        config, _bundle(input_key="video", pad_label=-1), always_zero, videos, _HostDriver(2)
    )
    built = _build(config, context)
    multi_view = built["val_multi_view"]
    assert multi_view.run(state=None) == {"clip_accuracy": 0.5, "video_accuracy": 0.5}
    # every_steps=0: only at the end of the run.
    assert not multi_view.due(0, final=False) and multi_view.due(7, final=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: setattr(c.evals, "val", dict(type="batched", batch_sise=8)),
            r"config.evals.val.batch_sise: unknown key .* Did you mean 'batch_size'",
        ),
        (
            lambda c: setattr(c.evals, "val", dict(type="tiles")),
            r"config.evals.val.type='tiles'; "
            r"choose one of \['batched', 'coco', 'multi_view', 'segmentation'\]",
        ),
        (
            lambda c: setattr(c.evals, "val", dict(type="batched", every_steps=-1)),
            r"config.evals.val.every_steps=-1 must be an integer >= 0",
        ),
        (
            lambda c: setattr(c.evals, "val", dict(type="batched", batch_size=6)),
            r"config.evals.val.batch_size=6 must be a positive multiple of the 4 devices",
        ),
        (
            lambda c: setattr(c.evals, "val", evaluators.section("segmentation", every_steps=1)),
            r"config.evals.val.type='segmentation' does not apply to the segmentation dataset "
            r"'synthetic'; use type='batched'",
        ),
    ],
)
def test_evaluator_sections_are_checked_by_their_evaluator(change, message):
    config = base_config()
    validate_config(config, tasks.for_dataset(config.data.name), num_devices=4, num_processes=1)
    with config.unlocked():
        change(config)
    with pytest.raises(ValueError, match=message):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=4, num_processes=1)


def test_missing_val_evaluator_and_old_keys_are_refused_with_the_new_ones():
    config = base_config()
    with config.unlocked():
        del config.evals["val"]
        config.evals.test = evaluators.section("batched")
    with pytest.raises(ValueError, match="config.evals has no 'val' evaluator"):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    for key, value, new in (
        ("eval_every_steps", 10, "config.evals.<name>.every_steps"),
        ("eval_batch_size", 8, "config.evals.val.batch_size"),
    ):
        old = base_config()
        with old.unlocked():
            old[key] = value
        with pytest.raises(ValueError, match=f"config.{key}.* is no longer a key; use .*{new}"):
            validate_config(old, tasks.for_dataset(old.data.name), num_devices=1, num_processes=1)


BFLOAT16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits


def test_one_predict_function_keeps_the_model_dtype_and_returns_float32():
    config = _config(**{"data.num_classes": 5})
    images = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3)), jnp.float32)
    float32 = tasks.build(config).module
    variables = float32.init(jax.random.key(0), images, train=False)
    # A fresh head's logits are O(1e-2), which any error bound of O(1e-2) cannot tell from zeros:
    # scale the classifier so that the float32 logits have unit standard deviation.
    raw = make_predict_fn(float32, variables)(images)
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["decode_head"]["conv_seg"]["kernel"] /= float(jnp.std(raw))
    variables = {**variables, "params": params}
    config.model.dtype = "bfloat16"
    bfloat16 = tasks.build(config).module
    logits32 = np.asarray(make_predict_fn(float32, variables)(images))
    logits16 = make_predict_fn(bfloat16, variables)(images)
    assert logits32.dtype == logits16.dtype == jnp.float32
    assert 0.9 < logits32.std() < 1.1
    # The same model computed in bfloat16: the error is a few unit roundoffs of the logits' scale
    # (measured: RMS 0.0073 = 1.9 roundoffs, max 0.024 on logits up to 2.7), far from zero logits.
    error = np.asarray(logits16) - logits32
    assert np.sqrt(np.mean(error**2)) <= 4 * BFLOAT16_UNIT_ROUNDOFF * logits32.std()
    assert np.abs(error).max() <= 8 * BFLOAT16_UNIT_ROUNDOFF * np.abs(logits32).max()
    assert not np.array_equal(logits16, logits32)  # ... and computed in bfloat16
