"""Run outputs in the workdir, written by process 0 only: TensorBoard event files (tensorboardX,
no TensorFlow needed), `metrics.jsonl` (one JSON object per line: {'step', 'split', ...}), the
resolved config (`config.json`), a tqdm progress bar and a PNG of the training curves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np
import tqdm

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def _jsonable(value):
    if isinstance(value, (np.ndarray, jax.Array)):
        return (
            [_jsonable(v) for v in np.asarray(value).tolist()]
            if np.ndim(value)
            else _jsonable(np.asarray(value).item())
        )
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class MetricWriter:
    """Scalars to TensorBoard + JSON lines; a no-op on processes other than 0."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self.workdir = workdir
        self._tb = self._jsonl = None  # opened on first write: a refused run writes nothing

    def _open(self) -> None:
        if self._tb is None:
            from tensorboardX import SummaryWriter  # imported lazily: heavy

            os.makedirs(self.workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
            path = os.path.join(self.workdir, METRICS_FILE)
            _drop_torn_tail(path)
            # Kept open across writes (append, flushed per record); closed in `close`.
            self._jsonl = open(path, "a")  # noqa: SIM115

    def forget_after(self, step: int, *, evaluations_at_step: bool = False) -> int:
        """Drops the records of `metrics.jsonl` past `step` (the step a run resumes from: a run
        stopped after its last checkpoint logged steps it will log again; -1 for a fresh start),
        and with `evaluations_at_step` the evaluation records at `step` too (an evaluation a
        preemption cut short is redone); returns how many. The file is rewritten whole and
        renamed over the old one: never half-written."""
        path = os.path.join(self.workdir, METRICS_FILE)
        if not self.active or not os.path.exists(path):
            return 0
        _drop_torn_tail(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        kept = [
            line
            for line in lines
            if _record_step(line) < step
            or (_record_step(line) == step and not (evaluations_at_step and _is_evaluation(line)))
        ]
        if len(kept) == len(lines):
            return 0
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
        logging.getLogger(__name__).debug(
            "%s: dropped %d records past step %d, which this run logs again.",
            path,
            len(lines) - len(kept),
            step,
        )
        return len(lines) - len(kept)

    def write_config(self, config) -> None:
        """`config.json`: a ConfigDict, or the dict of one (with its history,
        resume_check.py); written whole and renamed over the old one."""
        if self.active:
            os.makedirs(self.workdir, exist_ok=True)
            path = os.path.join(self.workdir, "config.json")
            with open(path + ".tmp", "w") as f:
                if isinstance(config, dict):
                    f.write(json.dumps(config, indent=2, sort_keys=True))
                else:
                    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
            os.replace(path + ".tmp", path)

    def write(self, step: int, split: str, metrics: dict) -> None:
        """Logs `metrics` (scalars or arrays; arrays go to JSON only) under `split/`."""
        if not self.active:
            return
        self._open()
        record = {"step": int(step), "split": split, "time": time.time()}
        for name, value in metrics.items():
            record[name] = _jsonable(value)
            if np.ndim(value) == 0 and math.isfinite(float(value)):
                self._tb.add_scalar(f"{split}/{name}", float(value), int(step))
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._jsonl.close()


def _record_step(line: str) -> float:
    """The step of one `metrics.jsonl` line (-inf when it does not parse: such a line is kept
    for `read_metrics` to name)."""
    try:
        return float(json.loads(line).get("step", float("-inf")))
    except (ValueError, AttributeError, TypeError):
        return float("-inf")


def _is_evaluation(line: str) -> bool:
    try:
        return json.loads(line).get("split") != "train"
    except (ValueError, AttributeError):
        return False


def _drop_torn_tail(path: str) -> None:
    """Cuts a last line without its newline (a record torn by a kill or a full disk) off
    `path`, with a warning, so that the next record starts on a line of its own."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    logging.getLogger(__name__).warning(
        "%s: removed a torn last record (%d bytes) left by an interrupted write.",
        path,
        len(data) - keep,
    )


def progress_bar(*, total: int, initial: int, enabled: bool) -> tqdm.tqdm:
    """Steps bar with ETA (tqdm's own); postfix set by `describe_progress`."""
    return tqdm.tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5,
    )


def describe_progress(
    bar: tqdm.tqdm, *, loss: float, lr: float, per_s: float, unit: str = "img"
) -> None:
    """Postfix: loss, lr and throughput in `unit`s per second (images or clips)."""
    bar.set_postfix(
        loss=f"{loss:.4f}", lr=f"{lr:.2e}", **{f"{unit}_s": f"{per_s:.1f}"}, refresh=False
    )


def read_metrics(workdir: str) -> list[dict]:
    """The records of `metrics.jsonl`. A torn last line (a kill or a full disk in the middle of a
    write) is skipped with a warning; a bad line elsewhere is a ValueError naming it."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as error:
            if position < len(lines) - 1:
                raise ValueError(
                    f"{path}, line {number}: not a JSON record ({error}); the file "
                    "is damaged in the middle. Remove that line."
                ) from None
            logging.getLogger(__name__).warning(
                "%s: skipped its last line (%d), a torn record (%d characters) left by an "
                "interrupted write.",
                path,
                number,
                len(line.rstrip("\n")),
            )
    return records


def save_curves_figure(
    workdir: str, *, title: str = "", val_metric: str = "miou", val_label: str = "val mIoU"
) -> str | None:
    """PNG with training loss and the val metric `val_metric` (in [0, 1], labelled `val_label`)
    against step, from `metrics.jsonl`; returns its path (None when nothing was logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    # A resumed run logs again the steps after its checkpoint: the last record of a step wins.
    train = sorted(
        {
            r["step"]: r["loss"]
            for r in records
            if r["split"] == "train" and r.get("loss") is not None
        }.items()
    )
    val = sorted(
        {
            r["step"]: r[val_metric]
            for r in records
            if r["split"] == "val" and r.get(val_metric) is not None
        }.items()
    )
    if not train and not val:
        return None
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=False), color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    if val:
        ax_val.plot(*zip(*val, strict=False), marker="o", color="tab:green")
    ax_val.set(xlabel="step", ylabel=val_label, ylim=(0, 1), title=f"validation: {val_label}")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(workdir, CURVES_FILE)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
