"""The pieces behind "one line on every fatal path" and resuming: library errors we report are
held back only when we report them (shutdown.py), metrics.jsonl forgets the steps a resumed run
logs again (logs.py), a resumed run with a changed config stops or records the change
(resume_check.py)."""

import json
import logging
import os
import sys
import types

import pytest

from dnl_jax.train import logs, resume_check, shutdown


@pytest.fixture
def quiet_libraries():
    """The commands' default: library records below ERROR hidden."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    yield
    root.setLevel(level)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def collected():
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    yield handler.messages
    logging.getLogger().removeHandler(handler)


def _library_error(text, error=None):
    exc_info = (type(error), error, None) if error else None
    logging.getLogger("absl").error(text, exc_info=exc_info)


def test_a_library_error_we_report_is_not_shown(quiet_libraries, collected):
    with pytest.raises(OSError), shutdown.reported_here(lambda error: isinstance(error, OSError)):
        _library_error("thread raised: no space")
        raise OSError("no space")
    # Later records of the same failure (other threads, collected tasks) are dropped too.
    _library_error("Task exception was never retrieved", OSError("no space"))
    assert collected == []
    # An unexpected library error still shows, with or without a handled one before.
    _library_error("something else", ValueError("else"))
    assert collected == ["something else"]


def test_library_errors_show_when_the_failure_is_not_ours_or_the_operation_succeeds(
    quiet_libraries, collected
):
    with shutdown.reported_here(lambda error: False):
        _library_error("noticed on the way")
    with pytest.raises(KeyError), shutdown.reported_here(lambda error: False):
        _library_error("before an error nobody reports")
        raise KeyError("x")
    assert collected == ["noticed on the way", "before an error nobody reports"]


def test_with_library_records_asked_for_nothing_is_held(collected):
    logging.getLogger().setLevel(logging.INFO)  # e.g. --log_level=info
    try:
        with pytest.raises(OSError), shutdown.reported_here(lambda error: True):
            _library_error("shown for debugging")
            raise OSError("no space")
    finally:
        logging.getLogger().setLevel(logging.WARNING)
    assert collected == ["shown for debugging"]


def test_the_event_loop_aftermath_is_dropped_only_after_a_handled_failure(
    quiet_libraries, monkeypatch
):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(str(info.exc_value)))
    info = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_value=RuntimeError("another"))
    with shutdown.reported_here(lambda error: True):
        sys.unraisablehook(info)  # held, then shown: the operation succeeded
    assert seen == ["Event loop is closed"]
    with pytest.raises(OSError), shutdown.reported_here(lambda error: True):
        raise OSError("no space")
    sys.unraisablehook(info)
    sys.unraisablehook(other)
    assert seen == ["Event loop is closed", "another"]


def test_close_all_closes_everything_and_hides_close_errors_only_while_failing():
    closed = []

    def broken():
        closed.append("broken")
        raise RuntimeError("close failed")

    closers = [("a", broken), ("b", lambda: closed.append("b"))]
    shutdown.close_all(closers, failing=True)
    assert closed == ["broken", "b"]
    with pytest.raises(RuntimeError, match="close failed"):
        shutdown.close_all(closers, failing=False)
    assert closed == ["broken", "b", "broken", "b"]


def test_metrics_past_the_restored_step_are_forgotten(tmp_path):
    writer = logs.MetricWriter(str(tmp_path))
    for step in (0, 10, 20, 30):
        writer.write(step, "train", {"loss": 1.0})
    writer.close()
    with open(tmp_path / logs.METRICS_FILE, "a") as file:
        file.write('{"step": 40, "split": "tra')  # torn by the kill
    resumed = logs.MetricWriter(str(tmp_path))
    assert resumed.forget_after(20) == 1  # 30 (the torn 40 is cut with its own warning)
    resumed.write(30, "train", {"loss": 0.5})
    resumed.close()
    steps = [r["step"] for r in logs.read_metrics(str(tmp_path))]
    assert steps == [0, 10, 20, 30]
    assert logs.read_metrics(str(tmp_path))[-1]["loss"] == 0.5
    # An evaluation cut short at the restored step is redone: its records go, the step's
    # training record stays; a fresh start (-1) forgets everything.
    again = logs.MetricWriter(str(tmp_path))
    again.write(30, "val", {"miou": 0.1})
    again.close()
    assert again.forget_after(30, evaluations_at_step=True) == 1
    assert [(r["step"], r["split"]) for r in logs.read_metrics(str(tmp_path))][-1] == (30, "train")
    assert again.forget_after(-1) == 4 and logs.read_metrics(str(tmp_path)) == []


# ---------------------------------------------------------------------------- config change
OLD = {
    "optimizer": {"lr": 0.1, "schedule": "poly", "momentum": 0.9},
    "total_steps": 1000,
    "batch_size": 16,
    "log_every_steps": 10,
    "evals": {"val": {"every_steps": 250}},
    "checkpoint": {"every_steps": 500},
}


def _changed(**flat):
    new = json.loads(json.dumps(OLD))
    for key, value in flat.items():
        *parents, leaf = key.split("__")
        node = new
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return new


def test_trajectory_changes_are_told_from_harmless_ones():
    harmless = _changed(log_every_steps=1, evals__val__every_steps=50, checkpoint__every_steps=5)
    assert resume_check.changed_keys(OLD, harmless) and not resume_check.trajectory_changes(
        OLD, harmless
    )
    assert resume_check.trajectory_changes(OLD, _changed(optimizer__lr=0.2)) == {
        "optimizer.lr": (0.1, 0.2)
    }
    assert "batch_size" in resume_check.trajectory_changes(OLD, _changed(batch_size=8))
    # total_steps: the poly schedule decays to it, the step schedule does not depend on it.
    assert "total_steps" in resume_check.trajectory_changes(OLD, _changed(total_steps=1100))
    step_old = _changed(optimizer__schedule="step")
    step_new = _changed(optimizer__schedule="step", total_steps=1100)
    assert resume_check.trajectory_changes(step_old, step_new) == {}


def test_a_changed_resume_stops_in_one_line_or_is_recorded(tmp_path, caplog):
    with open(tmp_path / "config.json", "w") as file:
        json.dump(OLD, file)
    new = _changed(optimizer__lr=0.2, total_steps=1100)
    with pytest.raises(resume_check.ConfigChanged) as caught:
        resume_check.check_resume(str(tmp_path), new, resuming=True, allow=False)
    message = str(caught.value)
    assert "\n" not in message and "optimizer.lr 0.1 → 0.2" in message
    assert "total_steps 1000 → 1100" in message and "--allow_config_change" in message
    assert resume_check.check_resume(str(tmp_path), new, resuming=False, allow=False) == {}
    with caplog.at_level(logging.WARNING):
        changes = resume_check.check_resume(str(tmp_path), new, resuming=True, allow=True)
    assert "optimizer.lr 0.1 → 0.2" in caplog.text
    recorded = resume_check.with_history(str(tmp_path), new, changes, step=1000)
    assert recorded[resume_check.HISTORY_KEY][0]["step"] == 1000
    assert recorded[resume_check.HISTORY_KEY][0]["changed"]["optimizer.lr"] == [0.1, 0.2]
    with open(tmp_path / "config.json", "w") as file:
        json.dump(recorded, file)
    # The next resume with the same config passes and keeps the history.
    assert resume_check.check_resume(str(tmp_path), new, resuming=True, allow=False) == {}
    again = resume_check.with_history(str(tmp_path), new, {}, step=1050)
    assert again[resume_check.HISTORY_KEY] == recorded[resume_check.HISTORY_KEY]
    assert os.path.exists(tmp_path / "config.json")
