"""Encoder-decoder segmentor (mmseg `EncoderDecoder`): ResNetV1c backbone, a decode head on the
last stage, an auxiliary FCN head on stage 3 (training only), logits resized to the input.

    images [B, H, W, 3] → backbone stages (1/4, 1/8, 1/8, 1/8 at output stride 8)
      → decode_head(stage 4)    → bilinear resize → 'logits'     [B, H, W, K]
      → auxiliary_head(stage 3) → bilinear resize → 'aux_logits' [B, H, W, K]  (train and aux)

Submodule names ↔ mmseg state_dict prefixes: `backbone` ↔ `backbone.`, `decode_head` ↔
`decode_head.`, `auxiliary_head` ↔ `auxiliary_head.` (see resnet.py, heads.py for the rest).

The segmentor's loss and metric live here too (`segmentation_loss`, `segmentation_metrics`), so
the trainer stays task-agnostic: total loss = CE(logits) + aux_weight · CE(aux_logits), OHEM (if
set) on the main logits only, as the official DNL code.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.models import heads, losses, residual
from dnl_jax.models.resnet import ResNetV1c, check_image, strides_and_dilations

Array = jax.Array
Dtype = Any


def resize_bilinear(x: Array, height: int, width: int) -> Array:
    """Bilinear resize of `[B, h, w, C]` to `[B, height, width, C]` with half-pixel centres and no
    anti-aliasing, i.e. PyTorch `interpolate(mode='bilinear', align_corners=False)`."""
    if x.shape[1:3] == (height, width):
        return x
    shape = (x.shape[0], height, width, x.shape[-1])
    return jax.image.resize(x, shape, method="bilinear", antialias=False)


class Segmentor(nn.Module):
    """Backbone + decode head (+ auxiliary FCN head in training), logits at the input size.

    `__call__(images [B, H, W, in_channels], train=False)` → `{'logits': [B, H, W, K]}` plus
    `'aux_logits'` when `train` and the auxiliary head is on. Any H, W work (no multiple-of-8
    constraint): the logits are resized bilinearly (align_corners=False) to (H, W).
    """

    backbone: ResNetV1c
    decode_head: nn.Module
    auxiliary_head: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> dict[str, Array]:
        check_image(images, self.backbone.in_channels)
        height, width = images.shape[1:3]
        stages = self.backbone(images, train=train)
        logits = self.decode_head(stages[-1], train=train)
        outputs = {"logits": resize_bilinear(logits, height, width)}
        # The auxiliary head also runs at init, so `init(..., train=False)` creates its
        # parameters; in evaluation it is skipped.
        if self.auxiliary_head is not None and (train or self.is_initializing()):
            aux = self.auxiliary_head(stages[-2], train=train)
            if train:
                outputs["aux_logits"] = resize_bilinear(aux, height, width)
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
    axis_name: Optional[str] = None,
    frozen_bn: bool = False,
    dtype: Optional[Dtype] = None,
    implementation: Optional[str] = None,
    in_channels: int = 3,
    backbone_kwargs: Optional[dict] = None,
    head_kwargs: Optional[dict] = None,
) -> Segmentor:
    """A `Segmentor` with a ResNetV1c-`backbone_depth` trunk and a `head` in
    {'dnl', 'nl', 'gc', 'fcn'} ('fcn' = mmseg FCNHead with 2 convs and concat_input) of width
    `channels`; the auxiliary head is mmseg's FCNHead (1 conv of `aux_channels`, no concat).

    Raises ValueError for an unknown head, output stride or depth, or non-positive sizes.
    """
    if head not in heads.HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(heads.HEADS)}.")
    strides_and_dilations(output_stride)  # Validates early, before any tracing.
    residual.check_depth(backbone_depth)
    for key, value in dict(num_classes=num_classes, channels=channels, aux_channels=aux_channels,
                           base_channels=base_channels, stem_channels=stem_channels).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}.")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}.")
    if stem_channels % 2:
        raise ValueError(
            f"stem_channels must be even (the deep stem starts at stem/2); got {stem_channels}."
        )
    common = dict(axis_name=axis_name, frozen_bn=frozen_bn, dtype=dtype)
    backbone = ResNetV1c(
        depth=backbone_depth, in_channels=in_channels, stem_channels=stem_channels,
        base_channels=base_channels, output_stride=output_stride, **common,
        **(backbone_kwargs or {}),
    )
    head_options = dict(head_kwargs or {})
    if head in ("dnl", "nl", "dnl_official", "dnl_official_nowd"):
        head_options.setdefault("implementation", implementation)
    decode_head = heads.HEADS[head](
        num_classes=num_classes, channels=channels, dropout_rate=dropout_rate, **common,
        **head_options,
    )
    auxiliary_head = None
    if aux:
        auxiliary_head = heads.FCNHead(
            num_classes=num_classes, channels=aux_channels, num_convs=1, concat_input=False,
            dropout_rate=dropout_rate, **common,
        )
    return Segmentor(backbone=backbone, decode_head=decode_head, auxiliary_head=auxiliary_head)


def segmentation_loss(outputs: dict, batch: dict, *, ignore_label: int = losses.IGNORE_LABEL,
                      aux_weight: float = 0.4, ohem: Optional[dict] = None,
                      class_weights=None) -> tuple[Array, dict[str, Array]]:
    """(total loss, {'loss', 'decode_loss', 'pixel_accuracy'[, 'aux_loss']}) for `outputs` of a
    `Segmentor` and a batch `{'label': int [B, H, W]}`; the auxiliary term only when
    'aux_logits' is present (training)."""
    labels = batch["label"]
    decode_loss = losses.pixel_cross_entropy(
        outputs["logits"], labels, ignore_label=ignore_label, class_weights=class_weights, ohem=ohem
    )
    metrics = {"decode_loss": decode_loss}
    total = decode_loss
    if "aux_logits" in outputs:
        aux_loss = losses.pixel_cross_entropy(
            outputs["aux_logits"], labels, ignore_label=ignore_label, class_weights=class_weights
        )
        metrics["aux_loss"] = aux_loss
        total = total + aux_weight * aux_loss
    metrics["loss"] = total
    metrics["pixel_accuracy"] = pixel_accuracy(outputs["logits"], labels, ignore_label)
    return total, metrics


def pixel_accuracy(logits: Array, labels: Array, ignore_label: int = losses.IGNORE_LABEL) -> Array:
    """Fraction of valid pixels whose argmax is right (mmseg's `acc_seg` / 100); 0 if none."""
    valid = losses.valid_pixels(labels, logits.shape[-1], ignore_label)
    correct = jnp.sum(valid & (jnp.argmax(logits, axis=-1) == labels))
    return correct / jnp.maximum(jnp.sum(valid), 1)


def segmentation_metrics(outputs: dict, batch: dict, *, num_classes: int,
                         ignore_label: int = losses.IGNORE_LABEL) -> dict[str, Array]:
    """`{'confusion': int32 [K, K]}` (rows ground truth, columns argmax prediction)."""
    predictions = jnp.argmax(outputs["logits"], axis=-1)
    confusion = losses.confusion_matrix(predictions, batch["label"], num_classes, ignore_label)
    return {"confusion": confusion}


__all__ = ["Segmentor", "build_segmentor", "resize_bilinear", "segmentation_loss",
           "segmentation_metrics", "pixel_accuracy"]
