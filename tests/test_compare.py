from __future__ import annotations

import numpy as np
import pytest

from converter.compare import DEFAULT_TOLERANCES, Tolerance, compare

RNG = np.random.default_rng(7)
REF = {"logits": RNG.standard_normal((16, 10)).astype(np.float32) * 5}


def test_identical_outputs_pass() -> None:
    result = compare(dict(REF), REF)
    assert result and result.outputs[0].max_abs == 0 and result.outputs[0].top1 == 1.0


def test_needed_tolerance_is_reported() -> None:
    noisy = {"logits": REF["logits"] + 1e-3}
    result = compare(noisy, REF, precision="fp32")
    assert not result
    out = result.outputs[0]
    scale = float(np.max(np.abs(REF["logits"])))
    # with rtol=1e-4 the atol needed (relative to scale) is about (1e-3 - 1e-4*|ref|)/scale, at most 1e-3/scale
    assert 0 < out.needed_atol <= 1e-3 / scale + 1e-9
    assert "needs atol" in result.table()
    # the reported tolerance indeed passes
    loose = Tolerance(atol=out.needed_atol * 1.01, rtol=1e-4, min_cosine=None, min_top1=None)
    assert compare(noisy, REF, loose)


def test_top1_agreement_for_class_scores() -> None:
    swapped = REF["logits"].copy()
    swapped[0] = -swapped[0]  # changes the arg-max of row 0
    result = compare({"logits": swapped}, REF, DEFAULT_TOLERANCES["int8"], "int8")
    assert result.outputs[0].top1 == pytest.approx(15 / 16)
    assert result.outputs[0].top5 is not None


def test_shape_mismatch_missing_output_and_nan_fail() -> None:
    assert not compare({"logits": REF["logits"][:8]}, REF)
    assert not compare({}, REF)
    nan = REF["logits"].copy()
    nan[3, 3] = np.nan
    result = compare({"logits": nan}, REF, Tolerance(atol=None, rtol=None, min_cosine=None))
    assert not result and "NaN" in result.outputs[0].problems[0]


def test_integer_outputs_compare_exactly() -> None:
    ref = {"idx": np.arange(10, dtype=np.int64)}
    assert compare({"idx": np.arange(10, dtype=np.int64)}, ref)
    other = np.arange(10, dtype=np.int64)
    other[0] = 5
    assert not compare({"idx": other}, ref)


def test_top1_ignores_nan_consistently() -> None:
    x = REF["logits"].copy()
    x[2, 4] = np.nan
    result = compare({"logits": x}, {"logits": x}, Tolerance(atol=None, rtol=None, min_cosine=None, min_top1=1.0))
    assert result.outputs[0].top1 == 1.0


def test_inf_where_the_reference_is_finite_fails_even_on_cosine_only() -> None:
    """An fp16 overflow turns values into inf: a cosine-only policy (int8/fp16) must not pass it (cosine is NaN)."""
    from converter.compare import Tolerance, compare_output

    cosine_only = Tolerance(atol=None, rtol=None, min_cosine=0.999, min_top1=None)
    assert not compare_output("y", np.array([np.inf, 1.0]), np.array([1.0, 1.0]), cosine_only).passed
    assert not compare_output("y", np.array([1.0, 1.0]), np.array([-np.inf, 1.0]), cosine_only).passed
    assert not compare_output("y", np.array([np.inf, 1.0]), np.array([-np.inf, 1.0]), cosine_only).passed
    assert compare_output("y", np.array([-np.inf, 1.0]), np.array([-np.inf, 1.0]), cosine_only).passed, "masked -inf in both agrees"
