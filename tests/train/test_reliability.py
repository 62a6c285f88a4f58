"""Faults one process can stage quickly: restore errors that are and are not damage, hosts that
disagree on the restore step, a full disk during a save, unfinished saves at start-up, time-based
saves, torn metric lines, SIGTERM without a distributed client, a lost peer's watch, out-of-range
class labels, non-finite evaluation outputs and a damaged prepared shard."""

import errno
import logging
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpoint_recovery import SIGNATURE, TARGET, _iterator, _open, _save_steps

from dnl_jax import tasks
from dnl_jax.data import pipeline
from dnl_jax.evaluators import common
from dnl_jax.train import checkpoint_faults as faults
from dnl_jax.train import distributed, logs, preemption
from dnl_jax.train.checkpoint import Checkpointer
from dnl_jax.train.step import make_eval_step


def _saved(directory, steps):
    """(reopened Checkpointer, a state to save) after saving `steps` in `directory`."""
    _save_steps(directory, steps)
    return _open(directory), {"w": np.zeros((64,), np.float32)}


# ------------------------------------------------------------------------------ restore errors
def test_damage_is_told_from_other_restore_errors():
    assert faults.shows_damage(FileNotFoundError("no such file: 3/state/manifest.ocdbt"))
    assert faults.shows_damage(ValueError("DATA_LOSS: Error reading: checksum mismatch"))
    assert faults.shows_damage(
        ValueError("FAILED_PRECONDITION: ZSTD_decompressStream() failed: Unknown frame descriptor")
    )
    wrapped = RuntimeError("restore failed")
    wrapped.__cause__ = EOFError("unexpected end of data")
    assert faults.shows_damage(wrapped)
    assert not faults.shows_damage(MemoryError())
    assert not faults.shows_damage(PermissionError(13, "Permission denied"))
    assert not faults.shows_damage(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating"))
    assert not faults.shows_damage(OSError("UNAVAILABLE: connection reset, not found"))
    assert not faults.shows_damage(RuntimeError("something else entirely"))


@pytest.mark.parametrize(
    "error",
    [
        MemoryError("out of memory"),
        PermissionError(13, "Permission denied"),
        OSError(errno.EIO, "transient read error, try again"),
    ],
)
def test_restore_error_that_is_not_damage_stops_and_moves_nothing(tmp_path, monkeypatch, error):
    checkpointer, _ = _saved(tmp_path / "c", steps=(1, 2))
    before = sorted(os.listdir(tmp_path / "c"))

    def failing_restore(step, target, iterator):
        raise error

    monkeypatch.setattr(checkpointer, "restore", failing_restore)
    with pytest.raises(RuntimeError, match=r"restoring checkpoint step 2 .* nothing was moved"):
        checkpointer.restore_latest(TARGET, _iterator(), SIGNATURE)
    assert sorted(os.listdir(tmp_path / "c")) == before
    assert not os.path.exists(str(tmp_path / "c") + "-unrestorable")


def test_restore_damage_sets_the_newest_aside(tmp_path, monkeypatch):
    checkpointer, _ = _saved(tmp_path / "c", steps=(1, 2))
    real = checkpointer.restore

    def damaged_newest(step, target, iterator):
        if step == 2:
            raise ValueError("DATA_LOSS: corrupt chunk in state/d/abc")
        return real(step, target, iterator)

    monkeypatch.setattr(checkpointer, "restore", damaged_newest)
    step, _ = checkpointer.restore_latest(TARGET, _iterator(), SIGNATURE)
    assert step == 1
    assert os.listdir(str(tmp_path / "c") + "-unrestorable") == ["2"]


def _fake_hosts(monkeypatch, values):
    monkeypatch.setattr(jax, "process_count", lambda: len(values))
    monkeypatch.setattr(
        faults.multihost_utils, "process_allgather", lambda x: np.asarray(values, np.int64)
    )


def test_hosts_that_disagree_on_the_restore_step_are_told(monkeypatch):
    _fake_hosts(monkeypatch, [40, 30])
    with pytest.raises(ValueError, match=r"disagree on the newest.*process 0: 40, process 1: 30"):
        faults.agree(40, "the newest checkpoint")
    _fake_hosts(monkeypatch, [40, 40])
    faults.agree(40, "the newest checkpoint")  # agreeing hosts pass


# ---------------------------------------------------------------------------------- disk
def test_full_disk_during_a_save_names_the_last_good_step_and_removes_the_partial(
    tmp_path, monkeypatch
):
    checkpointer, state = _saved(tmp_path / "c", steps=(1,))
    size_of_1 = faults.directory_bytes(str(tmp_path / "c" / "1"))

    def full_disk(step, **kwargs):  # a writer that ran out of space half-way
        partial = tmp_path / "c" / f"{step}.orbax-checkpoint-tmp-1234"
        os.makedirs(partial / "state")
        (partial / "state" / "chunk").write_bytes(b"x" * 100)
        raise ValueError("main: RESOURCE_EXHAUSTED") from OSError(
            errno.ENOSPC, "No space left on device"
        )

    monkeypatch.setattr(checkpointer.manager, "save", full_disk)
    with pytest.raises(faults.DiskFull) as raised:
        checkpointer.save(2, state, _iterator(), SIGNATURE, force=True)
    message = str(raised.value)
    assert "last good checkpoint is step 1" in message and f"about {size_of_1} bytes" in message
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path / "c")) == ["1"]  # the partial save is gone


def test_unfinished_saves_are_removed_at_start_up(tmp_path, caplog):
    _saved(tmp_path / "c", steps=(1,))
    os.makedirs(tmp_path / "c" / "2.orbax-checkpoint-tmp-99" / "state")
    with caplog.at_level(logging.WARNING):
        reopened = Checkpointer(str(tmp_path / "c"), every_steps=1, keep=3, keep_best=True)
    assert sorted(os.listdir(tmp_path / "c")) == ["1"]
    assert "removed 1 unfinished checkpoint save" in caplog.text
    assert reopened.latest_step() == 1


def test_time_interval_saves_whichever_comes_first(tmp_path, monkeypatch):
    import dnl_jax.train.checkpoint as checkpoint_module

    clock = [1000.0]

    monkeypatch.setattr(checkpoint_module.time, "monotonic", lambda: clock[0])
    checkpointer = Checkpointer(
        str(tmp_path / "c"), every_steps=100, keep=2, keep_best=False, every_seconds=60
    )
    assert not checkpointer.should_save(1)  # neither 100 steps nor 60 s
    clock[0] += 61
    assert checkpointer.should_save(2)  # the time interval first
    state = {"w": jnp.ones(3)}
    checkpointer.save(2, state, _iterator(), SIGNATURE, force=True)
    assert not checkpointer.should_save(3)  # the clock restarts at a save
    assert checkpointer.should_save(100)  # the step interval first


def test_torn_last_metrics_line_is_skipped_and_cut_before_appending(tmp_path, caplog):
    path = tmp_path / logs.METRICS_FILE
    path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "spl')
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1]
    assert "torn record" in caplog.text
    writer = logs.MetricWriter(str(tmp_path))
    writer.write(2, "train", {"loss": 0.5})
    writer.close()
    assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        logs.read_metrics(str(tmp_path))


# ----------------------------------------------------------------------------- preemption
def test_sigterm_without_a_distributed_client_is_recorded_by_our_handler():
    before = signal.getsignal(signal.SIGTERM)
    watcher = preemption.PreemptionWatcher()
    try:
        assert watcher.mode == "signal" and not watcher.check()
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.check() and watcher.check()  # stays True
        with pytest.raises(preemption.Preempted):
            watcher.raise_if_preempted()
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_with_a_distributed_client_jax_is_asked_with_a_check_counter(monkeypatch):
    """JAX's SIGTERM notifier stays installed: no Python handler; the counter is the number of
    checks (1, 2, 3, ...), the same on every host."""
    before = signal.getsignal(signal.SIGTERM)
    asked = []
    monkeypatch.setattr(preemption, "distributed_client", lambda: object())
    monkeypatch.setattr(preemption, "_service_enabled", lambda: True)
    monkeypatch.setattr(
        preemption.multihost_utils,
        "reached_preemption_sync_point",
        lambda counter: asked.append(counter) or counter == 3,
    )
    watcher = preemption.PreemptionWatcher()
    assert signal.getsignal(signal.SIGTERM) == before
    assert [watcher.check() for _ in range(4)] == [False, False, True, True]
    assert asked == [1, 2, 3]
    watcher.close()


class _FakeClient:
    def __init__(self):
        self.store = {}

    def key_value_set(self, key, value, allow_overwrite=False):
        self.store[key] = value

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


def test_the_watch_ends_a_survivor_before_jax_can_abort_it():
    """JAX can abort a survivor half a heartbeat timeout after a death (module docstring of
    dnl_jax/train/distributed.py); the watch's bound must stay inside that at every timeout
    `check_config` accepts, and a shorter timeout is refused with the shortest one named."""
    shortest = distributed.MIN_HEARTBEAT_SECONDS
    for timeout in (shortest, 10, 100, 1000):
        bound = (
            distributed.LOSS_FRACTION * timeout
            + 2 * distributed.BEAT_SECONDS
            + distributed.SCHEDULING_MARGIN
        )
        assert bound <= timeout / 2, (timeout, bound)
        assert distributed.LOSS_FRACTION * timeout >= 3 * distributed.BEAT_SECONDS
    section = distributed.default_config()
    section.heartbeat_timeout_seconds = shortest
    distributed.check_config(section)
    section.heartbeat_timeout_seconds = shortest - 1
    with pytest.raises(ValueError, match=rf"too short .* use >= {shortest}\.$"):
        distributed.check_config(section)


def test_peer_watch_names_a_silent_peer_and_ignores_a_finished_one(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "distributed_client", lambda: _FakeClient())
    watch = distributed.PeerWatch(str(tmp_path), heartbeat_timeout=10)
    watch.count, watch.me = 3, 0
    first = {f"{distributed.KEY_PREFIX}1": "5", f"{distributed.KEY_PREFIX}2": "7"}
    assert watch._stale(first, now=0.0) == []
    moved = {f"{distributed.KEY_PREFIX}1": "6", f"{distributed.KEY_PREFIX}2": "7"}
    assert watch._stale(moved, now=2.0) == []  # 2 silent for 2 s < 0.25 x 10 s
    assert watch._stale(moved, now=3.0) == [2]  # 2 silent for 3 s > 0.25 x 10 s
    done = {f"{distributed.KEY_PREFIX}1": "6", f"{distributed.KEY_PREFIX}2": distributed.DONE}
    assert watch._stale(done, now=4.0) == []
    os.makedirs(tmp_path / "checkpoints" / "4")
    line = distributed.lost_message([2], str(tmp_path))
    assert "lost process 2" in line and "resumes from step 4" in line
    assert "\n" not in line
    for program in ("/x/dnl_jax/cli/train.py", "/x/dnl_jax/main.py"):  # new and old path
        assert (
            distributed.resume_command([program, "--workdir", "w w"])
            == "python -m dnl_jax.cli.train --workdir 'w w'"
        )


# ------------------------------------------------------------------------------- bad data
def test_class_labels_outside_the_range_are_refused_with_count_and_values():
    check = tasks.for_dataset("kinetics").label_check(
        types.SimpleNamespace(num_classes=3), "clips in a batch"
    )
    batch = {"label": np.array([0, 3, 7, -1, 2, 7], np.int32)}
    with pytest.raises(
        ValueError,
        match=r"4 of 6 clips .* outside \[0, 3\) \(values: -1, 3, 7\)"
        r".*never clipped",
    ):
        check(batch)
    assert check({"label": np.array([0, 1, 2])})["label"].tolist() == [0, 1, 2]
    for dataset in ("synthetic", "cityscapes", "coco"):  # label maps / boxes: the loss counts
        assert (
            tasks.for_dataset(dataset).label_check(types.SimpleNamespace(num_classes=3), "") is None
        )


def test_out_of_range_training_labels_stop_the_training_stream():
    class Clips:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"video": np.zeros((1, 2, 2, 3), np.float32), "label": np.int32([0, 1, 3, 2][i])}

    stream = iter(
        pipeline.train_dataset(
            Clips(),
            seed=0,
            local_batch=4,
            process_index=0,
            process_count=1,
            check=pipeline.ClassLabelCheck(3, "training clips in a batch"),
        )
    )
    with pytest.raises(ValueError, match=r"1 of 4 training clips .*values: 3"):
        next(stream)


def test_nonfinite_evaluation_outputs_are_counted_and_stop_the_evaluation():
    class Dense:
        def apply(self, variables, x, train):
            return {"logits": x * variables["params"]["w"]}

    bundle = types.SimpleNamespace(
        module=Dense(), input_key="image", metrics_fn=lambda outputs, batch: {"n": jnp.int32(1)}
    )
    eval_step = make_eval_step(bundle)  # eager: the state here is no pytree
    state = types.SimpleNamespace(params={"w": jnp.float32(np.nan)}, batch_stats={})
    sums = eval_step(state, {"image": jnp.ones((2, 3))})
    assert int(sums["nonfinite_outputs"]) == 6
    with pytest.raises(common.NonFiniteOutputs, match="6 non-finite"):
        common.check_finite(sums["nonfinite_outputs"])
    common.check_finite(0)


def test_nonfinite_evaluation_names_the_step(tmp_path):
    from dnl_jax.train import trainer

    class Broken:
        name = "val"

        def due(self, step, final):
            return True

        def run(self, state):
            raise common.NonFiniteOutputs("3 non-finite (NaN or inf) logits in evaluation")

    checkpointer = types.SimpleNamespace(latest_step=lambda: 10, directory=str(tmp_path))
    run = types.SimpleNamespace(evaluators=[Broken()], writer=None, checkpointer=checkpointer)
    with pytest.raises(FloatingPointError, match=r"after step 12 .*newest on disk: 10.*3 non-fin"):
        trainer.evaluate(run, None, 12, final=False)


def test_damaged_shard_names_file_split_record_and_the_fix(tmp_path):
    from data_fixtures import write_cityscapes

    from dnl_jax.data import load_split
    from dnl_jax.data.prepare import prepare

    write_cityscapes(tmp_path / "raw", np.random.default_rng(0))
    prepare("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    shard = (
        tmp_path / "out" / "cityscapes" / "1.0.0" / "cityscapes-train.array_record-00000-of-00001"
    )
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a bad copy
    train = load_split("cityscapes", "train", str(tmp_path / "out"))
    with pytest.raises(ValueError) as raised:
        for index in range(len(train)):
            train[index]
    message = str(raised.value)
    assert "split 'train'" in message and "cityscapes-train.array_record-00000-of-00001" in message
    assert "record " in message and "python -m dnl_jax.cli.prepare cityscapes" in message
