"""Counts `for_dataset` calls and `Task.build_bundle` calls (model builds) in a 4-step run with 3
evaluations and the attention figure (the tiny config of tests/train_testing.py), for issue 32's
before/after: `cd TREE && PYTHONPATH=$PWD JAX_PLATFORMS=cpu python tools/count_lookups.py`
(works on trees before and after tasks/build.py; tests/train/test_resolve_once.py asserts it)."""

import collections
import sys
import tempfile

sys.path.insert(0, "tests")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
from train_testing import tiny_config  # noqa: E402

import dnl_jax.tasks as tasks  # noqa: E402
from dnl_jax.train import trainer  # noqa: E402

calls = collections.Counter()
modules = [tasks, trainer]
try:
    from dnl_jax.tasks import table

    modules.append(table)
except ImportError:
    pass
original = tasks.for_dataset


def counted(name):
    calls["for_dataset"] += 1
    return original(name)


for module in modules:
    if hasattr(module, "for_dataset"):
        module.for_dataset = counted
for task in tasks.TASKS.values():
    build = type(task).build_bundle

    def counted_build(self, *a, _b=build, **k):
        calls["build_bundle"] += 1
        return _b(self, *a, **k)

    type(task).build_bundle = counted_build
config = tiny_config(**{"evals.val.every_steps": 2, "attention_figure": True})
result = trainer.train_and_evaluate(config, tempfile.mkdtemp())
print(dict(calls), result["status"], result["step"])
