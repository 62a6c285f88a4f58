"""Adding an evaluator is one module and one line in `evaluators.TYPES`: a toy evaluator (its
class, standing for its module) registered with one line is checked, built and run by the same
code as the shipped ones, on the predict function and its own config section only."""

import jax
import numpy as np
import pytest

from dnl_jax import evaluators, tasks
from dnl_jax.evaluators import common
from dnl_jax.train.config import base_config, validate_config


class MeanTopLogit(common.Evaluator):
    """The mean over the first `num_examples` val examples of the top logit at the centre pixel
    (a toy protocol: what matters is what it reads — its section, the predict function and the
    source, nothing of the task or of config.data)."""

    KEYS = {"every_steps": 0, "num_examples": 2}
    INPUTS = ("scenes",)

    @classmethod
    def check(cls, name, settings, inputs, **hardware):
        super().check(name, settings, inputs, **hardware)
        if not isinstance(settings["num_examples"], int) or settings["num_examples"] < 1:
            raise ValueError(f"config.evals.{name}.num_examples must be an integer >= 1.")

    def run(self, state) -> dict:
        predict = self.predict_fn(state)
        count = self.settings["num_examples"]
        images = np.stack([self.context.source[i]["image"] for i in range(count)])
        logits = np.asarray(predict(images))
        centre = logits[:, logits.shape[1] // 2, logits.shape[2] // 2]
        return {"mean_top_logit": float(centre.max(-1).mean()), "examples": count}


class _HostDriver:
    def __init__(self, variables):
        self.variables = variables

    def host_variables(self, state):
        return self.variables


def test_a_toy_evaluator_is_one_module_and_one_table_line(monkeypatch):
    monkeypatch.setitem(evaluators.TYPES, "mean_top_logit", MeanTopLogit)  # the one line
    config = base_config()
    config.update_from_flattened_dict({"data.synthetic.image_size": 16, "data.num_classes": 5})
    with config.unlocked():
        config.evals.toy = evaluators.section("mean_top_logit", num_examples=3)
    assert dict(config.evals.toy) == {"type": "mean_top_logit", "every_steps": 0, "num_examples": 3}
    built = tasks.build(config)
    validate_config(config, built.task, num_devices=1, num_processes=1)

    with config.unlocked():
        config.evals.toy.num_examples = 0
    with pytest.raises(ValueError, match="config.evals.toy.num_examples must be an integer >= 1"):
        validate_config(config, built.task, num_devices=1, num_processes=1)
    config.evals.toy.num_examples = 3

    variables = built.init_variables({"params": jax.random.key(0), "dropout": jax.random.key(1)})
    source = built.task.eval_source(config.data, "val")
    context = evaluators.EvalContext(
        built.bundle,
        built.module,
        source,
        _HostDriver(variables),
        built.task.eval_inputs(config.data),
    )
    toy = {e.name: e for e in evaluators.from_config(config.evals, context)}["toy"]
    result = toy.run(state=None)
    images = np.stack([source[i]["image"] for i in range(3)])
    logits = np.asarray(built.module.apply(variables, images, train=False)["logits"])
    expected = logits[:, 8, 8].max(-1).mean()
    assert result["examples"] == 3
    np.testing.assert_allclose(result["mean_top_logit"], expected, rtol=1e-5)
    assert toy.due(10, final=True) and not toy.due(10, final=False)  # every_steps=0: at the end


def test_an_evaluator_of_other_inputs_is_refused_naming_the_ones_that_apply(monkeypatch):
    monkeypatch.setitem(evaluators.TYPES, "mean_top_logit", MeanTopLogit)
    config = base_config()
    config.update_from_flattened_dict({"data.name": "kinetics", "model.name": "dnl_i3d_tiny"})
    with config.unlocked():
        config.evals.toy = evaluators.section("mean_top_logit")
    inputs = tasks.build(config).task.eval_inputs(config.data)
    assert inputs.kind == "videos"
    assert evaluators.applicable_types(inputs) == ("batched", "multi_view")
    with pytest.raises(ValueError, match=r"type='mean_top_logit' does not apply to the video"):
        evaluators.check_config(config.evals, inputs, num_devices=1, num_processes=1)
