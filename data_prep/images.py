"""Per-image work: decode check, conversion to RGB JPEG, optional pre-resize.

An RGB (YCbCr) JPEG that needs no resize is stored as its original bytes, so a shard adds no second round of
JPEG loss. Anything else (grayscale, CMYK, a PNG or other format behind a .jpg name, an image larger than
``max_side``) is decoded with Pillow, converted to RGB and re-encoded as JPEG quality 95 with 4:4:4 chroma
(4:2:0 would halve colour detail that a learned resizer might use); the reason is recorded.

Truncated files must fail: this module never sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` and calls
``Image.load()`` so the whole stream is decoded.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageFile

JPEG_QUALITY = 95
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: camera multi-picture JPEG; its first frame is a plain JPEG stream
_GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


class ImageError(Exception):
    """An image that cannot be used (missing, unreadable, truncated); it is skipped or, with --strict, fatal."""


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """An image ready for a shard.

    Attributes:
        jpeg: RGB JPEG bytes.
        original_size: (width, height) of the source image.
        size: (width, height) of the stored image.
        converted: why the image was re-encoded ("grayscale", "cmyk", "png", "resized", joined with "+"),
            or None if the original bytes are stored.
    """

    jpeg: bytes
    original_size: tuple[int, int]
    size: tuple[int, int]
    converted: str | None


def prepare_image(data: bytes, *, max_side: int | None = None, decode_check: bool = True) -> PreparedImage:
    """Turns the bytes of an image file into RGB JPEG bytes for a shard.

    Args:
        data: the file's bytes.
        max_side: if set, images whose longer side exceeds it are downscaled (Lanczos) to that size.
        decode_check: decode the whole image even when the original bytes are kept, so that truncated or
            corrupt files are caught here rather than in training.

    Returns:
        The prepared image.

    Raises:
        ImageError: the file is not a readable, complete image.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; data_prep needs it False to catch truncated files")
    if not data:
        raise ImageError("unreadable: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            original_size = image.size
            reasons = _conversion_reasons(image, max_side)
            if not reasons:
                if decode_check:
                    image.load()
                return PreparedImage(data, original_size, original_size, None)
            image.load()
            rgb = _to_rgb(image)
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise ImageError(_describe(error)) from error

    if "resized" in reasons:
        assert max_side is not None
        scale = max_side / max(original_size)
        new_size = (max(1, round(original_size[0] * scale)), max(1, round(original_size[1] * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return PreparedImage(buffer.getvalue(), original_size, rgb.size, "+".join(reasons))


def _conversion_reasons(image: Image.Image, max_side: int | None) -> list[str]:
    reasons = []
    if image.format not in _JPEG_FORMATS:
        reasons.append((image.format or "unknown").lower())
    elif image.mode != "RGB":
        if image.mode in _GRAYSCALE_MODES:
            reasons.append("grayscale")
        elif image.mode == "CMYK":
            reasons.append("cmyk")
        else:
            reasons.append(image.mode.lower())
    if max_side is not None and max(image.size) > max_side:
        reasons.append("resized")
    return reasons


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "F"):
        # 16-bit and float grayscale (some PNGs): scale to 8 bit instead of clipping to 255
        peak = 1.0 if image.mode == "F" else 65535.0
        array = np.asarray(image, dtype=np.float64) * (255.0 / peak)
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become white rather than whatever colour the encoder left under them
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _describe(error: Exception) -> str:
    # Pillow names the stream object ("cannot identify image file <_io.BytesIO object at 0x7f...>"): the
    # address differs per run, and the reason goes into the manifest, which must be the same for the same input.
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "(not an image format Pillow reads)", str(error)) or type(error).__name__
    if "truncated" in text.lower() or "premature end" in text.lower():
        return f"truncated: {text}"
    return f"unreadable: {text}"


def check_jpeg(data: bytes) -> tuple[int, int]:
    """Decodes JPEG bytes fully and checks they are an RGB JPEG (what `verify` requires of every sample).

    Args:
        data: the bytes of a sample's ``jpg`` member.

    Returns:
        (width, height).

    Raises:
        ImageError: the bytes are not a complete RGB JPEG.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:
        raise ImageError(_describe(error)) from error
    if image.format not in _JPEG_FORMATS or image.mode != "RGB":
        raise ImageError(f"not an RGB JPEG: format {image.format}, mode {image.mode}")
    return image.size
