"""Reading images and masks from disk, and writing predicted masks, with one explicit rule for each.

Every reader decodes the whole file (``Image.load()``), so a truncated or corrupt file fails here, with a
:class:`~genmedseg.errors.DataError` naming the file, the cause and the fix, instead of deep inside training.
Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` switch, if some other code turns it on, would let truncated
files through; genmedseg never turns it on.

Before any pixel is decoded, the size in the file's header is checked against :data:`MAX_IMAGE_PIXELS` (or the
``GENMEDSEG_MAX_IMAGE_PIXELS`` environment variable): a decompression bomb, or a corrupt header that claims a huge
image, is refused at once instead of filling the memory. Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, a warning
at 89 megapixels and an error at twice that) is global state that other code may change or turn off; genmedseg
does not rely on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from genmedseg.atomic import atomic_write
from genmedseg.errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File extensions read as images or masks (compared case-insensitively)."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
MAX_CLASS_IDS = 64
"""More distinct ids than this in one mask is taken for a mask that was never meant as a label map."""
_UINT16_MAX = 65535

MAX_IMAGE_PIXELS = 50_000_000
"""Images with more pixels than this (width x height, from the file's header) are refused before decoding.

50 megapixels holds the largest images of the public 2D segmentation datasets (ISIC dermoscopy, about 30
megapixels) with room to spare, while one decoded image stays under 0.6 GB as float32 RGB. Set the environment
variable ``GENMEDSEG_MAX_IMAGE_PIXELS`` to a larger whole number for genuine larger images."""
PIXEL_LIMIT_VARIABLE = "GENMEDSEG_MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class MaskStats:
    """What :func:`read_mask` saw in a mask file, for check-data.

    ``distinct_values`` counts the values of the single channel before binarisation; ``rule`` says in words which
    binarisation rule applied; ``alpha_only`` is true when the colour channels are empty but the (ignored) alpha
    channel holds a shape, which almost always means the mask was saved as a transparency layer. ``class_ids`` are
    the class ids that :func:`read_label_map` finds (None for a float mask or more than ``MAX_CLASS_IDS`` ids).
    """

    shape: tuple[int, int]
    distinct_values: int
    rule: str
    foreground_pixels: int
    nonzero_pixels: int
    alpha_only: bool
    class_ids: tuple[int, ...] | None = None


def max_image_pixels() -> int:
    """The pixel limit in force: ``GENMEDSEG_MAX_IMAGE_PIXELS`` when set, else :data:`MAX_IMAGE_PIXELS`."""
    raw = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    if not raw.isdigit() or int(raw) == 0:
        raise ConfigError(f"{PIXEL_LIMIT_VARIABLE}={raw!r}: expected a positive whole number of pixels, e.g. 100000000")
    return int(raw)


def _too_large(path: str | os.PathLike, size: str, limit: int) -> DataError:
    return DataError(
        f"{path}: {size}, more than the limit of {limit / 1e6:.1f} megapixels (a corrupt header or a "
        f"decompression bomb); downscale the image, or, if it is genuine, raise the limit with {PIXEL_LIMIT_VARIABLE}=N"
    )


def decoded_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path``, check its size against the pixel limit and decode every pixel; every way a file can be
    unreadable (missing, not an image, truncated, corrupt, too large) becomes a DataError naming the file."""
    limit = max_image_pixels()
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > limit:
                raise _too_large(path, f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels)", limit)
            img.load()
            return img
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the folder and the names in the split file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable (chmod a+r)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file; move it out of the images/masks folder") from None
    except UnidentifiedImageError:
        raise DataError(
            f"{path}: not an image Pillow can read (unknown format or corrupt header); "
            "re-export it as PNG or remove it from the dataset"
        ) from None
    except Image.DecompressionBombError:
        # Raised by Pillow's own check inside Image.open, before the header size can be read here.
        raise _too_large(path, "too large for Pillow to open (its header claims a huge image)", limit) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow's plugins report damaged data through all of these types (they re-raise the zlib and struct
        # failures of their parsers as OSError/ValueError/SyntaxError; fuzzing in tests/test_robustness.py checks
        # that nothing else escapes).
        cause = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise DataError(
            f"{path}: {cause} image data ({type(exc).__name__}: {exc}); the file is damaged or incomplete: "
            "copy or export it again, or remove it from the dataset"
        ) from None


def _integer_range_check(path: str | os.PathLike, values: np.ndarray, mode: str) -> None:
    if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
        raise DataError(
            f"{path}: {mode} image with values {values.min()}..{values.max()} outside 0..65535; "
            "save it as an 8-bit or 16-bit PNG"
        )


def _float_range_check(path: str | os.PathLike, values: np.ndarray) -> None:
    if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
        raise DataError(
            f"{path}: floating-point image with values outside [0, 1] (or NaN); "
            "save it as an 8-bit or 16-bit PNG, or scale it to [0, 1]"
        )


def scale_to_unit_range(array: np.ndarray) -> np.ndarray:
    """float32 copy of ``array`` in [0, 1], scaled by its dtype: uint8 / 255, uint16 / 65535, bool as 0/1.

    Float arrays must already lie in [0, 1] and are not rescaled: the dtype decides, never the values, so an image
    can never be divided by 255 twice (the albumentations ``ToFloat`` trap). Raises ValueError otherwise.
    """
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype.kind == "u" and array.dtype.itemsize in (1, 2):  # any byte order (16-bit TIFFs are big-endian)
        return array.astype(np.float32) / (255.0 if array.dtype.itemsize == 1 else _UINT16_MAX)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise ValueError(
                "float image outside [0, 1] (or NaN): pass uint8/uint16 so that the dtype decides "
                "the scale, or divide by the maximum first"
            )
        return array.astype(np.float32)
    raise ValueError(f"unsupported image dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]")


def image_to_float(image: np.ndarray) -> np.ndarray:
    """An in-memory image as float32 ``H x W x 3`` in [0, 1], with the rules of :func:`read_image`.

    Accepts ``H x W`` and ``H x W x 1`` (gray, replicated), ``H x W x 2`` (gray + alpha), ``H x W x 3`` (RGB) and
    ``H x W x 4`` (RGBA); alpha is dropped; the dtype sets the scale (see :func:`scale_to_unit_range`).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an H x W or H x W x 1/2/3/4 image, got shape {image.shape}")
    colour = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    return scale_to_unit_range(colour)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as float32 ``H x W x 3`` in [0, 1].

    Modes: RGB as is; grayscale (L, 1-bit) replicated to three channels; RGBA and LA lose their alpha channel
    (dropped, not composited, so transparent pixels keep their colour); palette images are mapped through their
    palette; 16-bit images (``I;16``, and ``I`` with values in 0..65535) are scaled by 65535, not 255; float
    images (``F``) must already lie in [0, 1]; other modes (CMYK, YCbCr...) are converted to RGB. Multi-page TIFFs
    give their first page. EXIF orientation is *not* applied, because masks are drawn on the stored pixel grid.
    """
    img = decoded_image(path)
    if img.mode in ("P", "PA"):
        # Through RGBA so that palettes with transparency convert without Pillow's warning.
        img = img.convert("RGBA")
    elif img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F", *_SIXTEEN_BIT_MODES):
        img = img.convert("RGB")
    values = np.asarray(img)
    if img.mode == "I":
        _integer_range_check(path, values, img.mode)
        values = values.astype(np.uint16)
    elif img.mode == "F":
        _float_range_check(path, values)
    return image_to_float(values)


def _mask_channel(path: str | os.PathLike, img: Image.Image) -> tuple[np.ndarray, int | None, bool]:
    """One channel of mask values, the full-scale value of its dtype (None for float), and the alpha-only flag."""
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8), 1, False
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        _integer_range_check(path, values, img.mode)
        return values, _UINT16_MAX, False
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float32)
        _float_range_check(path, values)
        return values, None, False
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")
    array = np.asarray(img)
    if array.ndim == 2:
        return array, 255, False
    colour = array[:, :, :1] if img.mode == "LA" else array[:, :, :3]
    values = colour.max(axis=2)
    has_alpha = img.mode in ("LA", "RGBA")
    alpha_only = bool(has_alpha and not values.any() and array[:, :, -1].min() != array[:, :, -1].max())
    return values, 255, alpha_only


def _binarise(values: np.ndarray, full_scale: int | None) -> tuple[np.ndarray, str]:
    """Apply the documented binarisation rule (see :func:`read_mask`); return the mask and the rule in words."""
    if full_scale is None:
        return values > 0.5, "floating-point mask: foreground = value > 0.5"
    if full_scale == 1:
        return values > 0, "1-bit mask: foreground = set pixels"
    half = full_scale // 2  # value / full_scale > 0.5  <=>  value > half, for the odd maxima 255 and 65535
    if values.size == 0 or int(values.max()) <= half:
        return values > 0, f"label mask (all values below {half + 1}): foreground = value > 0"
    return values > half, f"foreground = value / {full_scale} > 0.5"


def _class_ids(values: np.ndarray, full_scale: int | None) -> np.ndarray | None:
    """Integer class ids of a mask channel (see :func:`read_label_map`); None for float masks."""
    if full_scale is None:
        return None
    if full_scale > 1 and values.size and int(values.max()) > full_scale // 2:
        return (values > full_scale // 2).astype(np.int64)  # a binary 0/255-style mask (JPEG noise included)
    return values.astype(np.int64)


def read_mask_with_stats(path: str | os.PathLike) -> tuple[np.ndarray, MaskStats]:
    """:func:`read_mask` and :func:`mask_stats` from a single decoding of the file."""
    values, full_scale, alpha_only = _mask_channel(path, decoded_image(path))
    mask, rule = _binarise(values, full_scale)
    ids = _class_ids(values, full_scale)
    present = None if ids is None else np.unique(ids)
    stats = MaskStats(
        shape=(int(mask.shape[0]), int(mask.shape[1])),
        distinct_values=int(np.unique(values).size),
        rule=rule,
        foreground_pixels=int(mask.sum()),
        nonzero_pixels=int(np.count_nonzero(values)),
        alpha_only=alpha_only,
        class_ids=None if present is None or present.size > MAX_CLASS_IDS else tuple(int(v) for v in present),
    )
    return mask, stats


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as a boolean ``H x W`` array (True = foreground).

    Binarisation rule, applied in this order:

    1. Reduce to one channel: grayscale as is; RGB and RGBA take the maximum over the colour channels (a pixel
       is foreground if *any* colour channel is), the alpha channel is ignored; palette masks are read by colour.
    2. 1-bit masks: set pixels are foreground. Float masks (mode ``F``, values in [0, 1]): value > 0.5.
    3. Label masks: if every value is below half the dtype's range (< 128 for 8-bit, < 32768 for 16-bit), the
       file is a label map (0/1 masks, instance label maps 0..K) and foreground = value > 0. Rule 4 would read such
       a file as empty, so a non-zero pixel is never lost.
    4. Otherwise scale by the dtype's maximum (255 or 65535) and foreground = value > 0.5 (i.e. >= 128 for
       8-bit), which also cleans JPEG noise around 0/255 masks.
    """
    return read_mask_with_stats(path)[0]


def mask_stats(path: str | os.PathLike) -> MaskStats:
    """Decode a mask fully and report its size, distinct values, the rule that binarised it and its foreground."""
    return read_mask_with_stats(path)[1]


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read a mask of integer class ids (0 = background) as an ``H x W`` int64 array, for methods that use classes.

    Grayscale, 16-bit and palette masks give their values (palette indices) as the ids. A mask whose values reach
    above half the dtype's range is a binary 0/255 (or 0/65535) mask, read as 0/1 with the rule of
    :func:`read_mask`. Colour-coded RGB masks (colour channels that differ) are refused: convert the colours to ids.
    """
    img = decoded_image(path)
    if img.mode in ("RGB", "RGBA"):
        colour = np.asarray(img)[:, :, :3]
        if (colour != colour[:, :, :1]).any():
            raise DataError(
                f"{path}: a colour-coded mask; label masks hold one class id per pixel (0 = background, "
                "1, 2, ...): save it as a single-channel PNG of ids"
            )
    if img.mode == "P":
        return np.asarray(img).astype(np.int64)
    values, full_scale, _ = _mask_channel(path, img)
    ids = _class_ids(values, full_scale)
    if ids is None:
        raise DataError(f"{path}: a floating-point mask cannot hold class ids; save it as an 8-bit PNG of ids")
    return ids


def size_mismatch_message(
    image_path: str | os.PathLike, image_hw: tuple[int, int], mask_path: str | os.PathLike, mask_hw: tuple[int, int]
) -> str:
    """The one wording of an image/mask size mismatch, shared by the dataset and check-data."""
    return (
        f"{image_path}: image is {image_hw[1]}x{image_hw[0]} (WxH) but its mask {mask_path} is "
        f"{mask_hw[1]}x{mask_hw[0]}; resize the mask to the image with nearest-neighbour interpolation, "
        "or re-export the pair"
    )


def read_pair(
    image_path: str | os.PathLike, mask_path: str | os.PathLike, labels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (``H x W x 3`` float32) and its mask (``H x W`` bool, or int64 class ids with ``labels``),
    refusing pairs of different sizes."""
    image = read_image(image_path)
    mask = read_label_map(mask_path) if labels else read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(size_mismatch_message(image_path, image.shape[:2], mask_path, mask.shape))
    return image, mask


def _write_png_atomically(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 ``H x W`` array as a grayscale PNG through a temporary file, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic_write's temporary names start with a dot, which dataset discovery skips if a crash leaves one behind.
    atomic_write(path, lambda temporary: Image.fromarray(array).save(temporary, format="PNG"))


def _two_dimensional(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D H x W array, got shape {array.shape}; squeeze the channel axis")
    return array


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a boolean (or 0/1) ``H x W`` mask as a 0/255 uint8 PNG, atomically."""
    mask = _two_dimensional(np.asarray(mask), "mask")
    _write_png_atomically(path, np.where(mask > 0, 255, 0).astype(np.uint8))


def write_probability_png(path: str | os.PathLike, probability: np.ndarray) -> None:
    """Write an ``H x W`` probability map in [0, 1] as a uint8 PNG holding ``round(p * 255)``, atomically."""
    probability = _two_dimensional(np.asarray(probability, dtype=np.float64), "probability map")
    if probability.size and not (
        np.isfinite(probability).all() and probability.min() >= 0.0 and probability.max() <= 1.0
    ):
        raise ValueError(f"{path}: probabilities must be finite and in [0, 1]; apply a sigmoid or clip first")
    _write_png_atomically(path, np.rint(probability * 255.0).astype(np.uint8))


def read_probability_png(path: str | os.PathLike) -> np.ndarray:
    """Read a map written by :func:`write_probability_png` back as float32 ``H x W`` in [0, 1] (value / 255)."""
    img = decoded_image(path)
    if img.mode != "L":
        raise DataError(
            f"{path}: expected an 8-bit grayscale probability PNG, got mode {img.mode}; write it "
            "with genmedseg.data.write_probability_png"
        )
    return np.asarray(img, dtype=np.float32) / 255.0
