"""The one safe image loader, and LLaVA-1.5's `pad` preprocessing.

Every image that enters llava-labeler (a file in a job, bytes posted to the
predictor, a URL a source fetched) goes through `load_image`: it refuses
non-images, truncated files and decompression bombs with an `ImageError` whose
message names the problem, and always returns an upright 8-bit RGB image.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.settings import ImageLimits


class ImageError(ValueError):
    """The input is not a usable image; the message says why, for a person to read."""


def _read_bytes(source: bytes | str | Path, limits: ImageLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such image file: {path}")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageError(f"image file is {size:,} bytes, over the {limits.max_bytes:,}-byte limit: {path}")
        data = path.read_bytes()
    if not data:
        raise ImageError("empty file: 0 bytes is not an image")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data):,} bytes, over the {limits.max_bytes:,}-byte limit")
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is flattened onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit data keeps its range (0..65535); I-mode images PIL opened from 16-bit files too.
        scale = 257.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 1.0
        image = Image.fromarray(np.clip(array / scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min(initial=0)), float(array.max(initial=0))
        span = hi - lo or 1.0
        image = Image.fromarray(((array - lo) / span * 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(source: bytes | str | Path, limits: ImageLimits | None = None) -> Image.Image:
    """Decode bytes or a file into an upright RGB image, or raise `ImageError` saying why not.

    Applies the EXIF orientation, takes the first frame of an animation, and converts
    palette, alpha, CMYK, greyscale and 16-bit images to 8-bit RGB.
    """
    limits = limits or ImageLimits()
    data = _read_bytes(source, limits)
    fmt = "unknown format"
    try:
        with warnings.catch_warnings():
            # Our own limit below is the guard; Pillow's hard stop (2x its MAX_IMAGE_PIXELS) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or fmt
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"image is {width}x{height} = {width * height:,} pixels, over the "
                    f"{limits.max_pixels:,}-pixel limit (decompression-bomb guard)"
                )
            if width == 0 or height == 0:
                raise ImageError(f"image has no pixels ({width}x{height})")
            image.seek(0)
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"not an image: the {len(data):,} bytes are in no format Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image refused by the decompression-bomb guard: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image ({fmt}): {exc}") from None
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block must not fail an otherwise good image
        pass
    return _to_rgb(image)


def pad_color(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """The processor's mean colour as 0..255 RGB (LLaVA pads with it)."""
    r, g, b = (int(round(channel * 255)) for channel in image_mean[:3])
    return (r, g, b)


def expand_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's `image_aspect_ratio=pad`: centre the image on a square of its longer side.

    The processor then resizes the square to its input size; nothing is cropped away.
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), color)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square
