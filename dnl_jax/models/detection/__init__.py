"""Mask R-CNN (R50-FPN) with NL / DNL / GC context blocks in the backbone, written for static
shapes (jit / pmap on CPU, GPU, TPU).

    boxes.py      IoU, delta box coder (mmdet DeltaXYWHBBoxCoder), clipping
    anchors.py    mmdet AnchorGenerator semantics (strides 4-64, scale 8, ratios 0.5/1/2)
    nms.py        fixed-size greedy NMS (single- and multi-class)
    roi_align.py  RoIAlign (bilinear, adaptive sampling, aligned) and the FPN level mapping
    targets.py    MaxIoU assignment, fixed-size random sampling, mask targets on device
    heads.py      FPN, RPN head, box heads (2fc / 4conv1fc), FCN mask head
    proposals.py  RPN proposals, RCNN post-processing, mask pasting
    mask_rcnn.py  the detector, its losses and its config

The COCO scorer is with the evaluators (dnl_jax/evaluators/coco_eval.py); the detection task (its
registry settings, datasets and bundle) is dnl_jax/tasks/detection.py.
"""
