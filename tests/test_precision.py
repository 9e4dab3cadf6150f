"""Mantissa rounding (codec/precision.py) against numcodecs' BitRound, and the automatic choice."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest

from napari_mrcz.codec.precision import (
    Rounding,
    auto_keepbits,
    check_keepbits,
    noise_level,
    round_mantissa,
)

SPECIAL = np.array([np.inf, -np.inf, -0.0, 0.0, 1e-45, 1e-40, 3.4e38, -3.4e38, 1.5, 2.5, 1.0 + 2**-23],
                   dtype=np.float32)


@pytest.mark.parametrize("keepbits", [0, 1, 4, 8, 12, 22, 23])
def test_rounding_equals_numcodecs_bitround_bit_for_bit(rng, keepbits):
    values = np.concatenate([(rng.normal(size=50_000) * 10.0 ** rng.integers(-30, 30, 50_000)),
                             SPECIAL]).astype(np.float32)
    ours = values.copy()
    round_mantissa(ours, keepbits)
    theirs = values.copy() if keepbits == 23 else np.frombuffer(
        numcodecs.BitRound(keepbits).encode(values.copy()), np.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), np.asarray(theirs).view(np.uint32))


def test_nan_stays_nan_and_ties_go_to_even():
    values = np.array([np.nan, 1.0 + 2**-1 + 2**-2, 1.0 + 2**-2, 1.0 + 3 * 2**-2], dtype=np.float32)
    round_mantissa(values, 1)
    assert np.isnan(values[0])
    assert values[1:].tolist() == [2.0, 1.0, 2.0], "1.75 -> 2; 1.25 -> 1 (even); 1.75 -> 2"


def test_float16_and_complex_round_each_part(rng):
    half = rng.normal(size=1000).astype(np.float16)
    ours = half.copy()
    round_mantissa(ours, 3)
    assert np.all((ours.view(np.uint16) & 0x7F) == 0), "10 - 3 = 7 low bits are zero"
    z = (rng.normal(size=1000) + 1j * rng.normal(size=1000)).astype(np.complex64)
    rounded = z.copy()
    round_mantissa(rounded, 6)
    for part, orig in ((rounded.real, z.real), (rounded.imag, z.imag)):
        want = np.frombuffer(numcodecs.BitRound(6).encode(np.ascontiguousarray(orig)), np.float32)
        np.testing.assert_array_equal(part, want)


def test_keepbits_is_refused_for_integers_and_out_of_range():
    with pytest.raises(ValueError, match="int16 data is stored exactly"):
        check_keepbits(8, np.int16)
    with pytest.raises(ValueError, match="0 to 10 for float16"):
        check_keepbits(11, np.float16)
    with pytest.raises(ValueError, match="0 to 23"):
        check_keepbits(-1, np.float32)
    check_keepbits("auto", np.complex64)


@pytest.mark.parametrize("sigma", [0.01, 1.0, 300.0])
def test_auto_keeps_the_fewest_bits_within_max_error_of_the_noise(rng, sigma):
    y, x = np.mgrid[0:256, 0:256]
    signal = 5.0 * sigma * np.sin(x / 40.0) * np.cos(y / 55.0) + 100.0 * sigma
    section = (signal + rng.normal(size=signal.shape) * sigma).astype(np.float32)
    assert noise_level(section) == pytest.approx(sigma, rel=0.1), "the pixel-to-pixel noise"
    bits = auto_keepbits(section, 0.01)
    rms = {}
    for k in (bits - 1, bits):
        trial = section.copy()
        round_mantissa(trial, k)
        rms[k] = float(np.sqrt(np.mean((trial.astype(np.float64) - section) ** 2)))
    assert rms[bits] <= 0.01 * sigma * 1.05, "within max_error (a 5% margin for the subsample)"
    assert rms[bits - 1] > 0.01 * sigma * 0.95, "one bit fewer would not be"
    assert auto_keepbits(section, 0.1) < bits < auto_keepbits(section, 0.001)


def test_a_rounding_leaves_the_callers_data_alone_and_records_what_it_kept(rng):
    section = rng.normal(size=(32, 32)).astype(np.float32)
    before = section.copy()
    rounding = Rounding("auto", 0.01, np.float32, n=2)
    out = rounding.apply(1, section)
    np.testing.assert_array_equal(section, before)
    assert out is not section and not np.array_equal(out, section)
    record = rounding.record()
    assert record["lossy"] and record["max_error"] == 0.01 and record["keepbits"][0] == 23
    assert 0 < record["keepbits"][1] < 23
    assert len(str(rounding.placeholder())) >= len(str(record))
