"""A fuzz pass over image and mask decoding: damaged, odd and hostile files give a DataError naming the file.

Every case is a small file of one of the formats Pillow reads, damaged in a seeded way (truncated, bit-flipped,
bytes overwritten, emptied) or crafted (huge dimensions in the header, a decompression bomb). Each reader must
either return a well-formed array or raise a DataError whose message starts with the file's path, within a time
bound, and never let another exception through.
"""

from __future__ import annotations

import io
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genmedseg.data.io import (
    MAX_IMAGE_PIXELS,
    PIXEL_LIMIT_VARIABLE,
    mask_stats,
    max_image_pixels,
    read_image,
    read_label_map,
    read_mask,
)
from genmedseg.errors import ConfigError, DataError

CASE_SECONDS = 5.0
"""The time bound of one decode: far above what a 24 x 20 file takes, far below a hang."""
READERS: tuple[Callable[[Path], np.ndarray], ...] = (read_image, read_mask, read_label_map)

_RNG = np.random.default_rng(7)
_RGB = _RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8)
_GREY16 = _RNG.integers(0, 65536, (24, 20), dtype=np.uint16)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seed_files() -> dict[str, bytes]:
    """Valid files of every format and mode oddity the readers meet in datasets."""
    rgb = Image.fromarray(_RGB)
    palette_with_transparency = rgb.convert("P")
    palette_with_transparency.info["transparency"] = 0
    seeds = {
        "png-rgb": _encode(rgb, "PNG"),
        "png-palette-transparency": _encode(palette_with_transparency, "PNG"),
        "png-la": _encode(rgb.convert("LA"), "PNG"),
        "png-rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png-16bit": _encode(Image.fromarray(_GREY16), "PNG"),
        "png-1bit": _encode(rgb.convert("1"), "PNG"),
        "jpeg": _encode(rgb, "JPEG"),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-16bit": _encode(Image.fromarray(_GREY16), "TIFF"),
        "tiff-float": _encode(Image.fromarray(_RNG.random((24, 20)).astype(np.float32)), "TIFF"),
        "gif": _encode(rgb, "GIF"),
        "webp": _encode(rgb, "WEBP"),
    }
    return seeds


def _mutations(data: bytes, rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    """Seeded damage of one file: cut at several points, bits flipped, header bytes and runs overwritten."""
    yield "empty", b""
    for cut in (8, len(data) // 3, len(data) // 2, len(data) - 1):
        yield f"cut at {cut}", data[:cut]
    for trial in range(6):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            damaged[position] ^= 1 << int(rng.integers(0, 8))
        yield f"bits flipped ({trial})", bytes(damaged)
    for trial in range(4):
        damaged = bytearray(data)
        start = int(rng.integers(0, min(48, len(data))))
        damaged[start : start + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        yield f"header bytes overwritten ({trial})", bytes(damaged)


@contextmanager
def _time_bound(seconds: float, what: str) -> Iterator[None]:
    """Fail the case if it runs longer than ``seconds`` (a hang); SIGALRM where there is one, else the clock."""
    start = time.monotonic()
    if sys.platform == "win32":
        yield
    else:

        def _expired(signum, frame):
            raise TimeoutError(f"{what}: still decoding after {seconds} s")

        previous = signal.signal(signal.SIGALRM, _expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < seconds, f"{what}: took {time.monotonic() - start:.1f} s"


def _decode_or_clear_error(reader: Callable[[Path], np.ndarray], path: Path, what: str) -> str:
    """Run one reader on one file; fail on anything but a well-formed array or a DataError naming the file."""
    with _time_bound(CASE_SECONDS, what):
        try:
            result = reader(path)
        except DataError as error:
            assert str(error).startswith(f"{path}: "), f"{what}: the error does not name the file: {error}"
            return "error"
    assert result.ndim in (2, 3) and result.shape[0] >= 1 and result.shape[1] >= 1, f"{what}: shape {result.shape}"
    if reader is read_image:
        assert result.dtype == np.float32 and result.shape[2] == 3 and np.isfinite(result).all(), what
        assert result.min() >= 0.0 and result.max() <= 1.0, what
    return "decoded"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's own notes on damaged TIFF tags and EXIF data
def test_damaged_files_give_a_clear_error_or_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A low limit turns damaged headers that claim a large image into a quick refusal rather than a slow decode.
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, "1000000")
    outcomes = {"error": 0, "decoded": 0}
    for name, data in _seed_files().items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        for reader in (read_image, read_mask):  # the undamaged file reads (read_label_map refuses colour files)
            assert _decode_or_clear_error(reader, path, f"{name} {reader.__name__}") == "decoded"
        for number, (damage, damaged) in enumerate(_mutations(data, np.random.default_rng(len(name)))):
            path = tmp_path / f"{name}-{number}.img"
            path.write_bytes(damaged)
            for reader in READERS:
                outcomes[_decode_or_clear_error(reader, path, f"{name}, {damage}, {reader.__name__}")] += 1
    assert outcomes["error"] > outcomes["decoded"] > 0  # most damage is caught; damaged pixels still decode


def _png(width: int, height: int, rows: Callable[[zlib._Compress], bytes]) -> bytes:
    """A grayscale PNG of the given header size whose compressed data ``rows`` writes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", rows(zlib.compressobj(9))) + chunk(b"IEND", b"")


def _zero_rows(width: int, height: int) -> Callable[[zlib._Compress], bytes]:
    def rows(compressor: zlib._Compress) -> bytes:
        row = bytes(width + 1)  # filter byte + pixels
        return b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    return rows


def test_a_decompression_bomb_is_refused_by_genmedseg_own_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 8000 x 8000 = 64 megapixels of zeros in an 80 kB file: under Pillow's own limits (89 megapixels for its
    # warning), over genmedseg's, and refused even with Pillow's check turned off.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(8000, 8000, _zero_rows(8000, 8000)))
    assert bomb.stat().st_size < 200_000 and MAX_IMAGE_PIXELS < 8000 * 8000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for reader in (*READERS, mask_stats):
        with _time_bound(CASE_SECONDS, reader.__name__), pytest.raises(DataError) as info:
            reader(bomb)
        message = str(info.value)
        assert message.startswith(f"{bomb}: 8000x8000 pixels (64.0 megapixels), more than the limit of 50.0")
        assert PIXEL_LIMIT_VARIABLE in message


def test_huge_dimension_headers_are_refused_before_decoding(tmp_path: Path) -> None:
    claims = tmp_path / "claims.png"  # a header of 100000 x 100000 with almost no data behind it
    claims.write_bytes(_png(100_000, 100_000, lambda compressor: compressor.compress(bytes(64)) + compressor.flush()))
    with _time_bound(CASE_SECONDS, "huge header"), pytest.raises(DataError, match=r"limit of 50\.0 megapixels") as info:
        read_image(claims)
    assert str(info.value).startswith(f"{claims}: ")
    tall = tmp_path / "tall.png"  # 40 megapixels, within the limit, but the data stops half way: truncated
    rows = _zero_rows(1000, 40_000)
    tall.write_bytes(_png(1000, 40_000, lambda compressor: rows(compressor)[:-100]))
    with _time_bound(CASE_SECONDS, "tall header"), pytest.raises(DataError, match="truncated") as info:
        read_mask(tall)
    assert str(info.value).startswith(f"{tall}: ")


def test_the_pixel_limit_can_be_raised_or_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(_RGB).save(path)
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, "100")
    with pytest.raises(DataError, match=r"20x24 pixels .* more than the limit of 0\.0 megapixels"):
        read_image(path)
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, "480")
    assert read_image(path).shape == (24, 20, 3)
    for bad in ("many", "-5", "0", "1e9"):
        monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, bad)
        with pytest.raises(ConfigError, match=PIXEL_LIMIT_VARIABLE):
            max_image_pixels()
    monkeypatch.delenv(PIXEL_LIMIT_VARIABLE)
    assert max_image_pixels() == MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    ("mode", "values", "message"),
    [
        ("I", np.array([[-5, 3], [70000, 1]], dtype=np.int32), "outside 0..65535"),
        ("F", np.array([[0.2, np.nan], [0.1, 0.4]], dtype=np.float32), "outside \\[0, 1\\]"),
        ("F", np.array([[0.2, 3.0], [0.1, 0.4]], dtype=np.float32), "outside \\[0, 1\\]"),
    ],
)
def test_out_of_range_values_are_a_clear_error(tmp_path: Path, mode: str, values: np.ndarray, message: str) -> None:
    path = tmp_path / f"odd-{mode}.tif"
    Image.fromarray(values, mode=mode).save(path)
    for reader in (read_image, read_mask):
        with pytest.raises(DataError, match=message) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: ")
