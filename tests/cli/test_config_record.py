"""`predict --config` and `export --config`: the preprocessing record of a training config file
(its dataset's task looked up once, by the command); with it, a bad checkpoint is still one
line."""

import os

from dnl_jax.cli import export
from dnl_jax.cli.predict import record_of_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "experiments", "configs", "synthetic_dnl_tiny.py")


def test_the_record_of_a_config_file():
    record = record_of_config_file(CONFIG)
    assert (record.task, record.dataset, record.model) == ("segmentation", "synthetic", "dnl_tiny")
    assert record.source == f"--config {CONFIG}"


def test_export_with_a_config_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    code = export.main(
        ["--checkpoint", missing, "--output", str(tmp_path / "m.jaxexport"), "--config", CONFIG]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"export: --checkpoint={missing} does not exist"), err
    assert len(err.strip().splitlines()) == 1
