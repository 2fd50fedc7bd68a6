"""leukmodels/values.py: the one answer to "is this value missing, or a finite number?" every module asks."""
import math

import numpy as np
import pandas as pd
import pytest

from leukmodels.values import finite_or, missing, plain


@pytest.mark.parametrize("value", [None, pd.NA, pd.NaT, math.nan, np.float64("nan"), np.float32("nan")])
def test_no_value_is_missing(value):
    assert missing(value) and plain(value) is None and finite_or(value) is None


@pytest.mark.parametrize("value", [0, 0.0, "", "text", [1, 2], math.inf, False])
def test_a_value_is_not_missing(value):
    assert not missing(value)


def test_finite_or_gives_a_float_for_finite_numbers_and_the_default_otherwise():
    assert finite_or(np.float32(0.5)) == 0.5 and finite_or(np.int64(3)) == 3.0 and finite_or(0) == 0.0
    assert type(finite_or(np.float64(0.25))) is float
    for value in (math.inf, -math.inf, math.nan, True, "0.5", None, pd.NA):
        assert finite_or(value) is None and finite_or(value, -math.inf) == -math.inf


def test_plain_unwraps_numpy_scalars_and_keeps_the_rest():
    assert type(plain(np.int64(3))) is int and type(plain(np.float64(0.5))) is float
    assert plain("resnet") == "resnet" and plain([1, 2]) == [1, 2] and plain(np.float64("nan")) is None
