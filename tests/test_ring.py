"""Fixed-point ring encoding (PROTOCOL 6, item 14): round-trip error, refusals, no overflow at the bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fednode.security.arrays import ModelSpec
from fednode.security.ring import (B_MAX, FRAC_BITS, RingEncodingError, check_no_overflow, decode, decode_model,
                                   encode, encode_model, ring_sum, ring_sum_models)

PROPS = settings(derandomize=True, deadline=None, max_examples=200)
HALF_ULP = 2.0 ** -(FRAC_BITS + 1)  # 2^-33

finite_in_bound = st.floats(min_value=-B_MAX, max_value=B_MAX, exclude_min=True, exclude_max=True,
                            allow_nan=False, allow_infinity=False)


@PROPS
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=16), elements=finite_in_bound))
def test_roundtrip_error_at_most_2_pow_minus_33(v: np.ndarray) -> None:
    u = encode(v)
    assert u.dtype == np.uint64 and u.shape == v.shape
    assert np.all(np.abs(decode(u) - v) <= HALF_ULP)


@PROPS
@given(hnp.arrays(np.float32, st.integers(0, 64), elements=st.floats(-1e6, 1e6, width=32)))
def test_float32_inputs_roundtrip(v: np.ndarray) -> None:
    assert np.all(np.abs(decode(encode(v)) - v.astype(np.float64)) <= HALF_ULP)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, B_MAX, -B_MAX, B_MAX * 1.5, 1e300, -1e300])
def test_encode_refuses_instead_of_wrapping(bad: float) -> None:
    v = np.array([0.0, 1.0, bad, 2.0])
    with pytest.raises(RingEncodingError):
        encode(v)
    assert issubclass(RingEncodingError, ValueError)


def test_encode_just_below_the_bound_is_accepted() -> None:
    """The largest float below 2^20 is 2^20 - 2^-33: it rounds (half to even) onto the bound itself,
    which is why the overflow condition carries the n * 2^-(f+1) rounding term."""
    edge = np.nextafter(B_MAX, 0.0)
    got = decode(encode(np.array([edge, -edge])))
    assert np.all(np.abs(got - [edge, -edge]) <= HALF_ULP)
    assert got.tolist() == [B_MAX, -B_MAX]


def test_encode_refuses_unsafe_parameters_and_dtypes() -> None:
    with pytest.raises(ValueError):
        encode(np.zeros(2), frac_bits=63)
    with pytest.raises(ValueError):
        encode(np.zeros(2), frac_bits=32, bound=2.0**31 * 1.5)  # rint(v 2^f) could exceed int64
    with pytest.raises(RingEncodingError):
        encode(np.array([1 + 2j]))
    with pytest.raises(RingEncodingError):
        decode(np.zeros(3, dtype=np.int64))


def test_known_encodings() -> None:
    u = encode(np.array([0.0, -0.0, 1.0, -1.0, 2.0**-32, 0.75 * 2.0**-32]))
    assert u.tolist() == [0, 0, 2**32, 2**64 - 2**32, 1, 1]
    assert decode(np.array([2**63], dtype=np.uint64))[0] == -(2.0**31)  # two's complement reading


def test_ring_sum_wraps_mod_2_64() -> None:
    a = np.array([2**64 - 1, 5], dtype=np.uint64)
    b = np.array([1, 2**64 - 7], dtype=np.uint64)
    assert ring_sum([a, b]).tolist() == [0, 2**64 - 2]
    assert a.tolist() == [2**64 - 1, 5]  # inputs untouched
    with pytest.raises(ValueError):
        ring_sum([a, np.zeros(3, dtype=np.uint64)])
    with pytest.raises(ValueError):
        ring_sum([])


def _weights(raw: list[float]) -> np.ndarray:
    w = np.asarray(raw, dtype=np.float64)
    return w / w.sum()


@PROPS
@given(n=st.integers(1, 16), data=st.data(), bound=st.sampled_from([B_MAX, 2.0**31 - 1.0]),
       eps=st.sampled_from([2.0**-52, 1e-9, 1e-3]))
def test_inputs_at_the_bound_with_unit_weight_sum_do_not_overflow(n: int, data, bound: float, eps: float) -> None:
    """Every contributor at +-B(1-eps), weights summing to 1: the ring sum decodes to the true sum.

    With B = 2^31 - 1 the integer sum comes within 2^33 of 2^63, so any wrap would flip its sign.
    """
    w = _weights(data.draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n)))
    signs = np.asarray(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)))
    assume(check_no_overflow(bound, math.fsum(w), n))
    x = signs * bound * (1 - eps)
    v = w * x  # the pre-scaled values each contributor encodes
    for same_sign in (False, True):
        vals = np.abs(v) if same_sign else v
        total = decode(ring_sum([encode(np.array([vj]), bound=bound) for vj in vals]))[0]
        true = math.fsum(vals)
        assert abs(total - true) <= n * HALF_ULP + np.spacing(abs(true))
        if same_sign:
            assert total > 0  # no wrap to negative


def test_overflow_condition_is_meaningful() -> None:
    """Weights summing to 1.5 at B = 2^31 - 1 violate the condition, and the sum really wraps."""
    bound, w = 2.0**31 - 1, np.array([0.5, 0.5, 0.5])
    assert not check_no_overflow(bound, float(w.sum()), 3)
    total = decode(ring_sum([encode(np.array([wj * (bound - 1)]), bound=bound) for wj in w]))[0]
    assert total < 0 < 1.5 * (bound - 1)


def test_check_no_overflow_is_exact_at_the_boundary() -> None:
    assert check_no_overflow(B_MAX, 1.0, 10**6)
    assert not check_no_overflow(2.0**31, 1.0, 0)  # equality is not enough
    assert check_no_overflow(2.0**31, 1.0 - 2.0**-40, 0)
    assert not check_no_overflow(2.0**30, 2.0, 1)  # B * sum W = 2^31 exactly, plus rounding
    assert check_no_overflow(2.0**30, 0.5, 2**32)  # 2^29 + 0.5 < 2^31
    assert not check_no_overflow(2.0**15, 1.0, 1, frac_bits=48)  # 2^15 + 2^-49 > 2^15
    assert check_no_overflow(2.0**15 - 1, 1.0, 2**40, frac_bits=48)
    with pytest.raises(ValueError):
        check_no_overflow(1.0, -1.0, 3)


def test_named_model_roundtrip_and_sum() -> None:
    model = {"w": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4), "b": np.array([0.25, -0.5])}
    enc = encode_model(model)
    assert set(enc) == {"w", "b"}
    assert all(a.dtype == np.uint64 for a in enc.values())
    assert ModelSpec.of(enc) == ModelSpec.of(model).with_dtype("<u8")
    dec = decode_model(enc)
    for k in model:
        assert dec[k].shape == model[k].shape
        assert np.all(np.abs(dec[k] - model[k]) <= HALF_ULP)
    doubled = decode_model(ring_sum_models([enc, enc]))
    assert np.allclose(doubled["w"], 2 * model["w"].astype(np.float64), atol=2 * HALF_ULP, rtol=0)
    with pytest.raises(RingEncodingError, match="'b'"):
        encode_model({"w": np.zeros(2), "b": np.array([np.nan])})
    with pytest.raises(ValueError):
        ring_sum_models([enc, {"w": enc["w"]}])
