"""Every config in experiments/configs/ validates, builds its model for its dataset's task and
documents its launch command."""

import importlib.util
import os

import pytest

from dnl_jax import tasks
from dnl_jax.tasks import for_dataset, get_model
from dnl_jax.train.config import validate_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")


CONFIG_FILES = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))


def _load_config_module(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_experiment_configs_validate_build_and_document_their_launch(name):
    module = _load_config_module(name)
    assert f"python -m dnl_jax.cli.train --config experiments/configs/{name}" in module.__doc__
    config = module.get_config()
    validate_config(config, tasks.for_dataset(config.data.name), num_devices=4, num_processes=1)
    bundle = get_model(config.model.name, config.data.num_classes, **config.model.kwargs)
    assert bundle.task == for_dataset(config.data.name).name
