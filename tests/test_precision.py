"""Mantissa rounding (codec/precision.py) against numcodecs' BitRound, and the automatic choice."""

from __future__ import annotations

import math
from pathlib import Path

import mrcz
import numcodecs
import numpy as np
import pytest

from napari_mrcz import codec, samples
from napari_mrcz.codec import MRCStack
from napari_mrcz.codec.precision import (
    PRECISION_KEY,
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
    theirs = np.asarray(theirs).reshape(ours.shape)  # plain MRC volumes: python-mrcz reads MZ as slices
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def reference_round(x: float, keepbits: int, bits: int = 23, min_exponent: int = -126) -> float:
    """One value rounded to ``keepbits`` mantissa bits, by arithmetic rather than bit masks.

    A float of exponent E (E >= min_exponent; subnormals share min_exponent)
    is a multiple of 2**(E - bits); keeping ``keepbits`` bits makes it a
    multiple of q = 2**(E - keepbits). x / q is exact (a power of two), and
    Python's round() goes to the nearest integer with ties to even; the sign
    stays (a small negative value rounds to -0.0).
    """
    if x == 0 or not math.isfinite(x):
        return x
    exponent = max(math.frexp(x)[1] - 1, min_exponent)
    quantum = math.ldexp(1.0, exponent - keepbits)
    return math.copysign(round(x / quantum) * quantum, x)


def _reference(values: np.ndarray, keepbits: int) -> np.ndarray:
    info = np.finfo(values.dtype)
    out = [reference_round(float(v), keepbits, info.nmant, info.minexp) for v in values]
    with np.errstate(over="ignore"):  # the largest values round up to inf, as in a narrower type
        return np.array(out, dtype=np.float64).astype(values.dtype)


@pytest.mark.parametrize("keepbits", [0, 1, 5, 8, 12, 22, 23])
def test_rounding_equals_an_arithmetic_reference(rng, keepbits):
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    values = np.concatenate([
        rng.normal(size=4000) * 10.0 ** rng.integers(-40, 38, 4000),
        np.array([1.0 + k * 2.0 ** -23 for k in range(64)]),  # the ties of every low-bit pattern near 1
        np.array([2.0 ** -126 * (1 - 2.0 ** -23), 2.0 ** -126, 3.4028235e38, -3.4028235e38, 1.5, 2.5, -2.5]),
    ]).astype(np.float32)
    edges = [tiny, 3 * tiny, -7 * tiny, np.inf, -np.inf, -0.0, 0.0]
    values = np.concatenate([values, edges]).astype(np.float32)
    ours = values.copy()
    round_mantissa(ours, keepbits)
    np.testing.assert_array_equal(ours.view(np.uint32), _reference(values, keepbits).view(np.uint32))
    zeros = values == 0
    assert np.signbit(ours[zeros]).tolist() == np.signbit(values[zeros]).tolist(), "-0.0 stays -0.0"


def test_float16_rounding_equals_the_reference(rng):
    values = (rng.normal(size=3000) * 10.0 ** rng.integers(-6, 4, 3000)).astype(np.float16)
    values = np.concatenate([values, np.array([65504, -65504, 6e-8, 1.0 + 2**-10, 1.5], np.float16)])
    for keepbits in (0, 3, 7, 10):
        ours = values.copy()
        round_mantissa(ours, keepbits)
        np.testing.assert_array_equal(ours.view(np.uint16), _reference(values, keepbits).view(np.uint16))


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


def test_under_auto_the_error_bound_holds_for_every_section(tmp_path, rng):
    """Sections of every kind: smooth + noise at many levels, a lattice, a sparse mask, NaNs, huge values."""
    y, x = np.mgrid[0:192, 0:192].astype(np.float32)
    sections = []
    for sigma in (1e-3, 0.05, 1.0, 40.0, 1e5):
        sections.append(100.0 * sigma * np.sin(x / 30.0) + rng.normal(size=x.shape) * sigma)
    sections.append(np.where((x + y) % 2 == 0, 1.0, -1.0) + rng.normal(size=x.shape) * 0.01)  # Nyquist
    sparse = np.zeros(x.shape)
    sparse[rng.random(x.shape) < 0.02] = rng.normal(size=int((rng.random(x.shape) < 0.02).sum()) or 1)[0]
    sections.append(sparse)
    holes = 5.0 + rng.normal(size=x.shape)
    holes[::7, ::5] = np.nan
    sections.append(holes)
    sections.append(3e37 + rng.normal(size=x.shape) * 1e36)  # near float32's top: rounding may reach inf
    sections.append(samples.tomogram(2, 192)[1])
    # a pattern the regular subsample misses: it sees every 4th column (small values), not the large ones
    sections.append(np.where(x % 4 == 0, 1.0, 1e4) + rng.normal(size=x.shape) * 0.1)
    volume = np.stack(sections).astype(np.float32)
    for max_error in (0.001, 0.01, 0.2):
        path = tmp_path / f"auto-{max_error}.mrcz"
        codec.writeMRC(volume, path, compressor="zstd", keepbits="auto", max_error=max_error)
        back, meta = codec.readMRC(path)
        assert len(meta[PRECISION_KEY]["keepbits"]) == len(sections)
        for i, (got, want) in enumerate(zip(back, volume, strict=True)):
            finite = np.isfinite(want)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            rms = np.sqrt(np.mean((got[finite].astype(np.float64) - want[finite]) ** 2))
            assert rms <= max_error * noise_level(want), f"section {i}, max_error {max_error}"


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


# -- writeMRC(keepbits=...) -----------------------------------------------------------
def _labels(path) -> list[str]:
    with MRCStack(path) as stack:
        return stack.header.labels


@pytest.mark.parametrize("compressor", ["zstd", "lz4", None])
def test_a_rounded_file_reads_the_same_in_python_mrcz_and_says_it_is_lossy(tmp_path, compressor):
    volume = samples.tomogram(8, 128)
    path = tmp_path / ("rounded.mrcz" if compressor else "rounded.mrc")
    codec.writeMRC(volume, path, compressor=compressor, keepbits=8, pixelsize=[10.0, 10.0, 10.0])
    ours, meta = codec.readMRC(path)
    theirs, their_meta = mrcz.readMRC(str(path))
    theirs = np.asarray(theirs).reshape(ours.shape)  # plain MRC volumes: python-mrcz reads MZ as slices
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    want = volume.copy()
    round_mantissa(want, 8)
    np.testing.assert_array_equal(ours.view(np.uint32), want.view(np.uint32))
    assert np.max(np.abs(ours - volume) / np.abs(volume)) <= 2.0 ** -9, "half an ulp of 8 bits at most"
    assert any(label.startswith("lossy: float mantissas rounded to 8 of 23 bits") for label in _labels(path))
    if compressor:
        assert meta[PRECISION_KEY] == their_meta[PRECISION_KEY] == {"lossy": True, "keepbits": 8,
                                                                    "mantissa_bits": 23}


def test_rounding_pays_and_lossless_stays_the_default(tmp_path):
    volume = samples.tomogram(8, 256)
    codec.writeMRC(volume, tmp_path / "exact.mrcz", compressor="zstd")
    codec.writeMRC(volume, tmp_path / "eight.mrcz", compressor="zstd", keepbits=8)
    exact, meta = codec.readMRC(tmp_path / "exact.mrcz")
    np.testing.assert_array_equal(exact, volume)
    assert PRECISION_KEY not in meta and not any("lossy" in t for t in _labels(tmp_path / "exact.mrcz"))
    ratio = (tmp_path / "exact.mrcz").stat().st_size / (tmp_path / "eight.mrcz").stat().st_size
    assert ratio > 1.8, f"8 of 23 mantissa bits: {ratio:.2f}x smaller than lossless"


def test_auto_records_the_bits_of_each_section_and_max_error(tmp_path, rng):
    quiet = np.full((64, 64), 100.0, np.float32) + rng.normal(size=(64, 64)).astype(np.float32) * 0.01
    noisy = np.full((64, 64), 100.0, np.float32) + rng.normal(size=(64, 64)).astype(np.float32) * 10.0
    path = tmp_path / "auto.mrcz"
    codec.writeMRC(np.stack([quiet, noisy]), path, compressor="zstd", keepbits="auto", max_error=0.05)
    _, meta = mrcz.readMRC(str(path))  # python-mrcz parses the JSON we rewrote in place
    record = meta[PRECISION_KEY]
    assert record["max_error"] == 0.05 and len(record["keepbits"]) == 2
    assert record["keepbits"] == [auto_keepbits(quiet, 0.05), auto_keepbits(noisy, 0.05)]
    assert record["keepbits"][0] > record["keepbits"][1], "less noise: more bits kept"


@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "int32"])
def test_keepbits_on_integer_data_is_a_clear_value_error(tmp_path, dtype):
    with pytest.raises(ValueError, match="stored exactly already"):
        codec.writeMRC(np.zeros((2, 4, 4), dtype), tmp_path / "x.mrcz", compressor="zstd", keepbits=4)
    assert not (tmp_path / "x.mrcz").exists()


def test_resaving_keeps_the_record_and_rounds_no_further_unless_asked(tmp_path):
    volume = samples.tomogram(4, 64)
    codec.writeMRC(volume, tmp_path / "a.mrcz", compressor="zstd", keepbits=10)
    data, meta = codec.readMRC(tmp_path / "a.mrcz")
    meta_json = {k: meta[k] for k in (PRECISION_KEY,)}
    codec.writeMRC(data, tmp_path / "b.mrcz", compressor="zstd", meta=meta_json)
    again, meta_b = codec.readMRC(tmp_path / "b.mrcz")
    np.testing.assert_array_equal(again, data)
    assert meta_b[PRECISION_KEY]["keepbits"] == 10


@pytest.mark.parametrize(("values", "stored"), [
    (np.array([0, 3, 7, 1], np.float32), np.int8),
    (np.array([-300, 3, 7, 1], np.float32), np.int16),
    (np.array([0, 60000, 7, 1], np.float32), np.uint16),
    (np.array([0, 3.5, 7, 1], np.float32), np.float32),
    (np.array([0, np.nan, 7, 1], np.float32), np.float32),
    (np.array([0, 3, 7, 1], np.int16), np.int16),
])
def test_dtype_auto_stores_whole_numbers_in_the_smallest_integer_mode(tmp_path, values, stored):
    data = np.stack([np.resize(values, (6, 6))] * 3)
    path = tmp_path / "counts.mrcz"
    codec.writeMRC(data, path, compressor="zstd", dtype="auto")
    with MRCStack(path) as stack:
        assert stack.header.dtype == stored
    theirs, _ = mrcz.readMRC(str(path))
    np.testing.assert_array_equal(np.asarray(theirs, dtype=np.float64), data.astype(np.float64))


# -- napari-mrcz compress --keepbits / --dtype ------------------------------------------
def test_compress_keepbits_rounds_floats_only_verifies_and_reports_the_largest_error(tmp_path):
    import json

    from .test_cli import cli

    src = tmp_path / "session"
    src.mkdir()
    tomogram = samples.tomogram(8, 128)
    codec.writeMRC(tomogram, src / "tomo.rec", pixelsize=[10.0, 10.0, 10.0])
    counts = (np.arange(2 * 32 * 32).reshape(2, 32, 32) % 7).astype(np.float32)
    codec.writeMRC(counts, src / "counts.mrc")
    ints = (np.arange(2 * 32 * 32).reshape(2, 32, 32) % 300).astype(np.int16)
    codec.writeMRC(ints, src / "ints.mrc")
    done = cli("compress", str(src), "-o", str(tmp_path / "z"), "--keepbits", "8", "--dtype", "auto",
               "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    outcomes = {Path(o["source"]).name: o for o in info["outcomes"]}
    assert outcomes["tomo.rec"]["keepbits"] == 8 and outcomes["ints.mrc"]["keepbits"] is None
    assert outcomes["counts.mrc"]["keepbits"] is None, "whole numbers: an integer mode, not rounded"
    largest = float(np.max(np.abs(codec.readMRC(tmp_path / "z" / "tomo.rec.mrcz")[0] - tomogram)
                           / np.abs(tomogram)))
    assert info["lossy"] == 1 and info["largest_error"] == pytest.approx(largest, rel=1e-6)
    assert 0 < largest <= 2.0 ** -9

    ours, meta = codec.readMRC(tmp_path / "z" / "tomo.rec.mrcz")
    theirs, _ = mrcz.readMRC(str(tmp_path / "z" / "tomo.rec.mrcz"))
    np.testing.assert_array_equal(ours.view(np.uint32), np.asarray(theirs).view(np.uint32))
    assert meta[PRECISION_KEY]["keepbits"] == 8
    with MRCStack(tmp_path / "z" / "counts.mrc.mrcz") as stack:
        assert stack.header.dtype == np.int8
    np.testing.assert_array_equal(codec.readMRC(tmp_path / "z" / "ints.mrc.mrcz")[0], ints)

    text = cli("info", str(tmp_path / "z" / "tomo.rec.mrcz"), str(tmp_path / "z" / "ints.mrc.mrcz")).stdout
    assert "lossy: 8 mantissa bits" in text and "lossless" in text
    table = cli("compress", str(src), "-o", str(tmp_path / "z2"), "--keepbits", "8").stdout
    assert "lossy: 2 files with rounded float mantissas, largest relative error" in table, "no --dtype auto"
    assert all(len(line) <= 80 for line in table.splitlines())


def test_compress_refuses_keepbits_beyond_float32s_mantissa():
    from .test_cli import cli

    done = cli("compress", "nothing", "-o", "nowhere", "--keepbits", "24")
    assert done.returncode == 2 and "keep 0 to 23" in done.stderr


# -- the batch's verification ------------------------------------------------------------
def test_the_written_check_finds_a_chunk_that_decodes_to_something_else_and_a_changed_byte(tmp_path, rng):
    from napari_mrcz.codec.convert import Outcome, VerificationError, WrittenCheck
    from napari_mrcz.codec.export import write_image

    data = rng.normal(size=(4, 32, 32)).astype(np.float32)
    check = WrittenCheck(True, True, Outcome("src", "dst", "failed"))
    path = tmp_path / "v.mrcz"
    write_image(data, path, {}, [1.0, 1.0, 1.0], stack=False, compressed=True, check=check)
    check.on_disk(path, 4, source="src")  # as written: passes

    good = path.read_bytes()
    raw = bytearray(good)
    raw[-codec.chunk_trailer.nbytes(4) - 10] ^= 0x01  # one bit of the last chunk, on disk
    path.write_bytes(bytes(raw))
    with pytest.raises(VerificationError, match="bytes on disk of section 3"):
        check.on_disk(path, 4, source="src")
    raw = bytearray(good)
    raw[-30] ^= 0x01  # one bit of the chunks' index after them
    path.write_bytes(bytes(raw))
    with pytest.raises(VerificationError, match="not the chunks' index"):
        check.on_disk(path, 4, source="src")
    path.write_bytes(good)

    wrong = WrittenCheck(True, True, Outcome("src", "dst", "failed"))
    chunk = codec.blosc_chunks.Compressor("zstd", 1, 4, data[0].nbytes, "blosc1", 1)
    with chunk.session():
        wrong(0, chunk(np.ascontiguousarray(data[1])), data[0], None)  # section 1's chunk for section 0
    with pytest.raises(VerificationError, match="section 0 does not decode"):
        wrong.on_disk(path, 4, source="src")


def test_a_rerun_with_other_precision_writes_again_and_the_same_skips(tmp_path):
    from napari_mrcz.codec.convert import convert

    source = tmp_path / "tomo.rec"
    codec.writeMRC(samples.tomogram(4, 64), source)
    target = tmp_path / "tomo.rec.mrcz"
    assert convert(source, target, keepbits=4).status == "done"
    assert convert(source, target, keepbits=4).status == "skipped"
    again = convert(source, target)  # lossless asked: the 4-bit file is not what was asked
    assert again.status == "done"
    np.testing.assert_array_equal(codec.readMRC(target)[0], codec.readMRC(source)[0])
    assert convert(source, target).status == "skipped"
    assert convert(source, target, keepbits="auto").status == "done"
    assert convert(source, target, keepbits="auto", max_error=0.1).status == "done"
    assert convert(source, target, keepbits="auto", max_error=0.1).status == "skipped"


def test_the_lossy_label_leaves_our_label_and_the_batch_stamp_in_place(tmp_path):
    import mrcfile

    from napari_mrcz.codec.convert import convert

    source = tmp_path / "imod.rec"
    with mrcfile.new(source) as mrc:
        mrc.set_data(samples.tomogram(2, 32))
        for k in range(9):
            mrc.add_label(f"IMOD label {k}")
    target = tmp_path / "imod.rec.mrcz"
    assert convert(source, target, keepbits=8).status == "done"
    labels = _labels(target)
    assert len(labels) == 10 and any(t.startswith("lossy:") for t in labels)
    assert "batch source" in labels[-1] and "napari-mrcz" in labels[-2], "ours last, as before"
    assert convert(source, target, keepbits=8).status == "skipped", "the stamp is still there"
