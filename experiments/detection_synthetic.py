"""Train the tiny Mask R-CNN on the embedded synthetic detection scenes and print COCO box / mask
AP (pycocotools) on the val split: the detection path end to end, outside the trainer until the
detection task is wired into it.

    python experiments/detection_synthetic.py --steps 300 --context dnl --seed 0 \\
        --out /tmp/detection_synthetic.json

The backbone is a ResNet-18 with 16 base channels trained from scratch (batch norm in training
mode), heads 32 / 64 wide; `--context dnl` puts a DNL block after the residual add of res4's
second-to-last block (the official "c4" placement).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnl_jax.data.synthetic_detection import SyntheticDetection
from dnl_jax.models.detection import coco_eval, targets
from dnl_jax.models.detection.mask_rcnn import MaskRCNN
from dnl_jax.models.residual import ContextSpec


def build_model(context: str, num_classes: int) -> MaskRCNN:
    spec = None if context == "none" else ContextSpec(context, "after_add", reduction=4)
    return MaskRCNN(
        num_classes=num_classes, depth=18, stem_channels=16, base_channels=16, frozen_bn=False,
        context=spec, context_block_indices=None if spec is None else ((), (), (-2,), ()),
        fpn_channels=32, fc_channels=64, conv_channels=32, rpn_train=(200, 100),
        rpn_test=(200, 100), rpn_sampler=targets.SamplerConfig(64, 0.5),
        rcnn_sampler=targets.SamplerConfig(32, 0.25), max_detections=10, roi_grid_limit=2)


def stack(examples: list[dict]) -> dict:
    return {key: jnp.asarray(np.stack([e[key] for e in examples])) for key in examples[0]}


def make_step(model: MaskRCNN, optimizer):
    def step(params, stats, opt_state, batch, key):
        def loss_fn(p):
            (loss, parts), updates = model.apply(
                {"params": p, "batch_stats": stats}, batch, method=model.loss,
                rngs={"sampler": key}, mutable=["batch_stats"])
            return loss, (parts, updates["batch_stats"])

        (loss, (parts, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, parts

    return jax.jit(step)


def evaluate(model, variables, source: SyntheticDetection, batch_size: int) -> dict:
    predict = jax.jit(model.apply)
    categories = list(range(1, source.num_classes + 1))
    images, results = [], []
    for start in range(0, len(source), batch_size):
        examples = [source[i] for i in range(start, min(start + batch_size, len(source)))]
        batch = stack(examples)
        out = predict(variables, batch["image"], batch["image_size"])
        results += coco_eval.model_results(out, [int(e["image_id"]) for e in examples],
                                           np.asarray(batch["image_size"]), categories)
        for e in examples:
            valid = e["gt_valid"]
            images.append({"id": int(e["image_id"]), "height": source.image_size,
                           "width": source.image_size, "boxes": e["gt_boxes"][valid],
                           "labels": e["gt_labels"][valid], "masks": e["gt_masks"][valid]})
    metrics, _ = coco_eval.evaluate(coco_eval.ground_truth_dataset(images, categories), results)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", default="none", choices=("none", "dnl", "nl", "gc"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--out", default="detection_synthetic.json")
    args = parser.parse_args()
    train = SyntheticDetection(args.steps * args.batch, image_size=64, seed=args.seed)
    val = SyntheticDetection(args.val, image_size=64, split="val", seed=args.seed)
    model = build_model(args.context, train.num_classes)
    variables = jax.jit(lambda key, x: model.init(key, x, method=model.build))(
        jax.random.key(args.seed), stack([train[0]])["image"])
    schedule = optax.warmup_cosine_decay_schedule(args.lr / 3, args.lr, 50, args.steps)
    # The reference's optimiser: SGD momentum 0.9, weight decay 1e-4, gradient clip 35.
    optimizer = optax.chain(optax.clip_by_global_norm(35.0), optax.add_decayed_weights(1e-4),
                            optax.sgd(schedule, momentum=0.9))
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    step = make_step(model, optimizer)
    start = time.time()
    for index in range(args.steps):
        batch = stack([train[index * args.batch + i] for i in range(args.batch)])
        key = jax.random.fold_in(jax.random.key(args.seed + 1), index)
        params, stats, opt_state, parts = step(params, stats, opt_state, batch, key)
        if index % 50 == 0 or index == args.steps - 1:
            print(f"step {index}: " + ", ".join(f"{k} {float(v):.4f}" for k, v in parts.items()),
                  flush=True)
    train_seconds = time.time() - start
    metrics = evaluate(model, {"params": params, "batch_stats": stats}, val, args.batch)
    record = {"context": args.context, "seed": args.seed, "steps": args.steps,
              "batch": args.batch, "train_seconds": round(train_seconds, 1),
              **{k: round(v, 4) for k, v in metrics.items()}}
    print(json.dumps(record))
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
