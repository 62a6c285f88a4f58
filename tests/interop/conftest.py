"""The converted mmdet detectors shared by test_interop_mmdet.py and test_interop_mmdet_v1.py
(built once per test module that asks for them; tests/interop/mmdet_detector.py)."""

import pytest


@pytest.fixture(name="two_fc", scope="module")
def fixture_two_fc():
    """2fc box head, no norms in the FPN or the heads, no context blocks."""
    from mmdet_detector import converted  # pylint: disable=import-outside-toplevel

    return converted("2fc", gc=False, norms=False, seed=0)


@pytest.fixture(name="four_conv_gc", scope="module")
def fixture_four_conv_gc():
    """4conv1fc box head, batch norms in the FPN and heads (the official DNL configs' norms),
    mmcv's ContextBlock in stage 3."""
    from mmdet_detector import converted  # pylint: disable=import-outside-toplevel

    return converted("4conv1fc", gc=True, norms=True, seed=1)
