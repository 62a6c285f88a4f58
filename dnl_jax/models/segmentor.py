"""Encoder-decoder segmentor (mmseg `EncoderDecoder`): ResNetV1c backbone, a decode head on the
last stage, an auxiliary FCN head on stage 3 (training only), logits resized to the input.

    images [B, H, W, 3] → backbone stages (1/4, 1/8, 1/8, 1/8 at output stride 8)
      → decode_head(stage 4)    → bilinear resize → 'logits'     [B, H, W, K]
      → auxiliary_head(stage 3) → bilinear resize → 'aux_logits' [B, H, W, K]  (train and aux)

Submodule names ↔ mmseg state_dict prefixes: `backbone` ↔ `backbone.`, `decode_head` ↔
`decode_head.`, `auxiliary_head` ↔ `auxiliary_head.` (see resnet.py, heads.py for the rest).

The segmentor's loss and metric live here too (`segmentation_loss_ratios`,
`segmentation_confusion`), so the trainer stays task-agnostic: total loss = CE(logits) +
aux_weight · CE(aux_logits), OHEM (if set) on the main logits only, as the official DNL code;
each CE a sum over pixels divided by a normaliser summed over the global batch (losses.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.core.attention import sharded as sharded_attention
from dnl_jax.models import heads, losses, residual
from dnl_jax.models.resnet import ResNetV1c, check_image, strides_and_dilations

Array = jax.Array
Dtype = Any


def resize_bilinear(x: Array, size: Sequence[int], align_corners: bool = False) -> Array:
    """Bilinear resize of `[B, h, w, C]` to `[B, *size, C]`, no anti-aliasing: PyTorch
    `interpolate(mode='bilinear', align_corners=...)`; the one resize of logits and images in
    training and evaluation.

    align_corners=False: half-pixel centres, source = (i + 0.5)·h/H − 0.5 (clamped at the edges);
    align_corners=True: the corner pixels of input and output coincide, source = i·(h−1)/(H−1)
    (mmseg's 769×769 Cityscapes configs, the official DNL code).
    """
    height, width = (int(s) for s in size)
    if x.shape[1:3] == (height, width):
        return x
    if not align_corners:
        shape = (x.shape[0], height, width, x.shape[-1])
        return jax.image.resize(x, shape, method="bilinear", antialias=False)
    return _resize_axis_align_corners(_resize_axis_align_corners(x, height, 1), width, 2)


def _resize_axis_align_corners(x: Array, size: int, axis: int) -> Array:
    """Linear interpolation of `x` along `axis` to `size` samples, corners aligned."""
    length = x.shape[axis]
    scale = (length - 1) / (size - 1) if size > 1 else 0.0
    source = np.arange(size, dtype=np.float32) * np.float32(scale)  # static: shapes are known
    low = np.minimum(np.floor(source).astype(np.int32), length - 1)
    high = np.minimum(low + 1, length - 1)
    frac = (source - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    frac = jnp.asarray(frac, x.dtype)
    return (1 - frac) * jnp.take(x, low, axis=axis) + frac * jnp.take(x, high, axis=axis)


class Segmentor(nn.Module):
    """Backbone + decode head (+ auxiliary FCN head in training), logits at the input size.

    `__call__(images [B, H, W, in_channels], train=False)` → `{'logits': [B, H, W, K]}` plus
    `'aux_logits'` when `train` and the auxiliary head is on. Any H, W work (no multiple-of-8
    constraint): the logits are resized bilinearly to (H, W) with `align_corners` (mmseg's
    heads' setting; the loss sees these logits, so the loss's resize uses it too).
    """

    backbone: ResNetV1c
    decode_head: nn.Module
    auxiliary_head: nn.Module | None = None
    align_corners: bool = False

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> dict[str, Array]:
        check_image(images, self.backbone.in_channels)
        height, width = images.shape[1:3]
        stages = self.backbone(images, train=train)
        logits = sharded_attention.constrain_positions(self.decode_head(stages[-1], train=train))
        outputs = {
            "logits": sharded_attention.constrain_positions(
                resize_bilinear(logits, (height, width), self.align_corners)
            )
        }
        # The auxiliary head also runs at init, so `init(..., train=False)` creates its
        # parameters; in evaluation it is skipped.
        if self.auxiliary_head is not None and (train or self.is_initializing()):
            aux = self.auxiliary_head(stages[-2], train=train)
            if train:
                outputs["aux_logits"] = resize_bilinear(aux, (height, width), self.align_corners)
        return outputs


def build_segmentor(
    backbone_depth: int,
    head: str,
    num_classes: int,
    output_stride: int = 8,
    aux: bool = True,
    *,
    base_channels: int = 64,
    stem_channels: int = 64,
    channels: int = 512,
    aux_channels: int = 256,
    dropout_rate: float = 0.1,
    axis_name: str | None = None,
    frozen_bn: bool = False,
    dtype: Dtype | None = None,
    implementation: str | None = None,
    in_channels: int = 3,
    align_corners: bool = False,
    backbone_kwargs: dict | None = None,
    head_kwargs: dict | None = None,
) -> Segmentor:
    """A `Segmentor` with a ResNetV1c-`backbone_depth` trunk and a `head` in
    {'dnl', 'nl', 'gc', 'fcn'} ('fcn' = mmseg FCNHead with 2 convs and concat_input) of width
    `channels`; the auxiliary head is mmseg's FCNHead (1 conv of `aux_channels`, no concat).

    Raises ValueError for an unknown head, output stride or depth, or non-positive sizes.
    """
    _check_arguments(
        head,
        output_stride,
        backbone_depth,
        dropout_rate,
        num_classes=num_classes,
        channels=channels,
        aux_channels=aux_channels,
        base_channels=base_channels,
        stem_channels=stem_channels,
    )
    common = dict(axis_name=axis_name, frozen_bn=frozen_bn, dtype=dtype)
    backbone = ResNetV1c(
        depth=backbone_depth,
        in_channels=in_channels,
        stem_channels=stem_channels,
        base_channels=base_channels,
        output_stride=output_stride,
        **common,
        **(backbone_kwargs or {}),
    )
    head_options = dict(head_kwargs or {})
    if head in ("dnl", "nl", "dnl_official", "dnl_official_nowd"):
        head_options.setdefault("implementation", implementation)
    decode_head = heads.HEADS[head](
        num_classes=num_classes,
        channels=channels,
        dropout_rate=dropout_rate,
        **common,
        **head_options,
    )
    auxiliary_head = None
    if aux:
        auxiliary_head = heads.FCNHead(
            num_classes=num_classes,
            channels=aux_channels,
            num_convs=1,
            concat_input=False,
            dropout_rate=dropout_rate,
            **common,
        )
    return Segmentor(
        backbone=backbone,
        decode_head=decode_head,
        auxiliary_head=auxiliary_head,
        align_corners=align_corners,
    )


def _check_arguments(
    head: str, output_stride: int, backbone_depth: int, dropout_rate: float, **sizes
) -> None:
    """`build_segmentor`'s ValueErrors, raised before any module is built or traced."""
    if head not in heads.HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(heads.HEADS)}.")
    strides_and_dilations(output_stride)
    residual.check_depth(backbone_depth)
    for key, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}.")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}.")
    if sizes["stem_channels"] % 2:
        raise ValueError(
            "stem_channels must be even (the deep stem starts at stem/2); "
            f"got {sizes['stem_channels']}."
        )


def segmentation_loss_ratios(
    outputs: dict,
    batch: dict,
    *,
    ignore_label: int = losses.IGNORE_LABEL,
    ohem: dict | None = None,
    class_weights=None,
    normalizer: str = "kept",
) -> dict[str, tuple[Array, Array]]:
    """Ratio statistics `{name: (numerator, denominator)}` of a `Segmentor`'s `outputs` for a
    batch `{'label': int [B, H, W]}` (+ 'ohem_keep': bool [B, H, W], the pixels OHEM selected,
    when already known): 'decode_loss', 'aux_loss' (when 'aux_logits' is present, i.e. in
    training; no OHEM, as the official code), 'pixel_accuracy' and 'out_of_range_labels' (the
    fraction of label pixels outside [0, K) that are not the ignore label). Each metric of the
    global batch is Σ numerators / Σ denominators over its shards (losses module docstring).
    """
    labels = batch["label"]
    options = dict(ignore_label=ignore_label, class_weights=class_weights, normalizer=normalizer)
    ratios = {
        "decode_loss": losses.pixel_cross_entropy_sum(
            outputs["logits"], labels, ohem=ohem, keep=batch.get("ohem_keep"), **options
        )
    }
    if "aux_logits" in outputs:
        ratios["aux_loss"] = losses.pixel_cross_entropy_sum(
            outputs["aux_logits"], labels, **options
        )
    num_classes = outputs["logits"].shape[-1]
    valid = losses.valid_pixels(labels, num_classes, ignore_label)
    correct = valid & (jnp.argmax(outputs["logits"], axis=-1) == labels)
    ratios["pixel_accuracy"] = (
        jnp.sum(correct, dtype=jnp.float32),
        jnp.sum(valid, dtype=jnp.float32),
    )
    ratios["out_of_range_labels"] = (
        losses.out_of_range_pixels(labels, num_classes, ignore_label).astype(jnp.float32),
        jnp.float32(labels.size),
    )
    return ratios


def ohem_selection(
    outputs: dict, batch: dict, *, ohem: dict, ignore_label: int = losses.IGNORE_LABEL
) -> dict[str, Array]:
    """`{'ohem_keep': bool [B, H, W]}`: the pixels OHEM keeps for the main logits (computed
    once, before the backward pass, so that the global normaliser can be summed first)."""
    logits, labels = outputs["logits"], batch["label"]
    valid = losses.valid_pixels(labels, logits.shape[-1], ignore_label)
    return {
        "ohem_keep": losses.ohem_keep_mask(logits, labels, valid, ohem["thresh"], ohem["min_kept"])
    }


def segmentation_confusion(
    outputs: dict, batch: dict, *, num_classes: int, ignore_label: int = losses.IGNORE_LABEL
) -> dict[str, Array]:
    """`{'confusion': int32 [K, K]}` (rows ground truth, columns argmax prediction)."""
    predictions = jnp.argmax(outputs["logits"], axis=-1)
    confusion = losses.confusion_matrix(predictions, batch["label"], num_classes, ignore_label)
    return {"confusion": confusion}


__all__ = [
    "Segmentor",
    "build_segmentor",
    "resize_bilinear",
    "segmentation_loss_ratios",
    "ohem_selection",
    "segmentation_confusion",
]
