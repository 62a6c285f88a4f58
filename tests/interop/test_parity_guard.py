"""The PyTorch parity tests never skip: a missing reference dependency fails, in CI and locally."""

import pytest
from torch_reference import require


def test_a_missing_reference_dependency_fails_instead_of_skipping():
    # BaseException: pytest's skip is one too, and must not pass for the ImportError.
    with pytest.raises(BaseException) as raised:
        require("dnl_jax_no_such_reference_module")
    assert raised.type is ImportError, raised.type
    assert "never skip" in str(raised.value) and "make install" in str(raised.value)


def test_a_present_reference_dependency_is_imported():
    assert require("math").sqrt(4.0) == 2.0
