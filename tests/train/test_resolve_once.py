"""The entry point resolves the task and builds the model once (tasks/build.py), and everything
below it gets them as objects: a 4-step run with 3 evaluations and the attention figure looks
the dataset's task up at most once and builds the model exactly once."""

import collections

from train_testing import enable_compilation_cache, tiny_config

from dnl_jax import tasks
from dnl_jax.tasks import table
from dnl_jax.train.logs import read_metrics
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()


def _count_lookups_and_builds(monkeypatch) -> collections.Counter:
    """Counts every call of `for_dataset` (through any of its import paths) and of every task's
    `build_bundle` (the one place a model module is constructed)."""
    calls: collections.Counter = collections.Counter()
    original_lookup = table.for_dataset

    def counted_lookup(name):
        calls["for_dataset"] += 1
        return original_lookup(name)

    monkeypatch.setattr(table, "for_dataset", counted_lookup)
    monkeypatch.setattr(tasks, "for_dataset", counted_lookup)
    for task in table.TASKS.values():
        original_build = type(task).build_bundle

        def counted_build(self, *args, _original=original_build, **kwargs):
            calls["build_bundle"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(type(task), "build_bundle", counted_build)
    return calls


def test_a_four_step_run_resolves_the_task_once_and_builds_the_model_once(monkeypatch, tmp_path):
    calls = _count_lookups_and_builds(monkeypatch)
    config = tiny_config(**{"evals.val.every_steps": 2, "attention_figure": True})
    result = train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "completed" and result["step"] == 4
    assert result["attention"] is not None  # the figure's model is the one built
    evaluated = [r["step"] for r in read_metrics(str(tmp_path)) if r["split"] == "val"]
    assert evaluated == [0, 2, 4]
    assert calls["for_dataset"] == 1, calls  # in tasks.build, at the entry point
    assert calls["build_bundle"] == 1, calls


def test_the_pmap_driver_builds_once_more_for_the_host_model_in_the_same_build(monkeypatch):
    calls = _count_lookups_and_builds(monkeypatch)
    built = tasks.build(tiny_config(parallelism="pmap"), axis_name="batch")
    assert calls == {"for_dataset": 1, "build_bundle": 2}
    assert built.options["axis_name"] == "batch"
    assert built.bundle.module.backbone.axis_name == "batch"
    assert built.module.backbone.axis_name is None
