"""The one safe image loader, and LLaVA-1.5's `pad` preprocessing.

Every image that enters llava-labeler (a file in a job, bytes posted to the
predictor, a URL a source fetched) goes through `load_image`: it refuses
non-images, truncated files and decompression bombs with an `ImageError` whose
message names the problem, and always returns an upright 8-bit RGB image, no
larger than `ImageLimits.reduce_above` on its longer side (the model sees 336 px, so
a 40-megapixel photo is reduced as it is decoded rather than held whole).
`image_size` reads the size from the header alone, for limits checked before decoding.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.settings import ImageLimits


# Modes Pillow resamples faithfully as they are; palette, 1-bit and 16-bit images are reduced once they are RGB.
_RESAMPLED_AS_IS = frozenset({"L", "LA", "RGB", "RGBA", "CMYK"})


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
            raise ImageError(f"image file is over the {limits.max_bytes:,}-byte limit: {path}")
        data = path.read_bytes()
    if not data:
        raise ImageError("empty file: 0 bytes is not an image")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is over the {limits.max_bytes:,}-byte limit")
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


@contextmanager
def _opened(data: bytes, limits: ImageLimits) -> Iterator[Image.Image]:
    """The image with only its header read, checked against the pixel limit; Pillow's errors inside become `ImageError`."""
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
            yield image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image: the bytes are in no format Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image refused by the decompression-bomb guard: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image ({fmt}): {exc}") from None


def image_size(source: bytes | str | Path, limits: ImageLimits | None = None) -> tuple[int, int]:
    """(width, height) read from the header alone, nothing decoded: what a request's pixel budget is checked on.

    Raises `ImageError` for what `load_image` refuses before decoding (not an image, over the pixel limit).
    """
    limits = limits or ImageLimits()
    with _opened(_read_bytes(source, limits), limits) as image:
        return image.size


def _reduced(image: Image.Image, longest: int) -> Image.Image:
    """`image` (decoded) with its longer side at most `longest`, aspect kept, reduced in place."""
    if max(image.size) > longest:
        image.thumbnail((longest, longest))
    return image


def load_image(source: bytes | str | Path, limits: ImageLimits | None = None) -> Image.Image:
    """Decode bytes or a file into an upright RGB image, or raise `ImageError` saying why not.

    Applies the EXIF orientation, takes the first frame of an animation, and converts
    palette, alpha, CMYK, greyscale and 16-bit images to 8-bit RGB. An image whose longer
    side is over `limits.reduce_above` comes back reduced to it (the model sees 336 px):
    a JPEG is decoded at a reduced scale (Pillow's draft mode), any other image is reduced
    right after decoding, so only one full-size decode is ever held, and only briefly.
    """
    limits = limits or ImageLimits()
    longest = limits.reduce_above
    with _opened(_read_bytes(source, limits), limits) as image:
        image.seek(0)
        width, height = image.size
        if max(width, height) > longest:
            scale = longest / max(width, height)
            image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        image.load()
        if image.mode in _RESAMPLED_AS_IS:
            image = _reduced(image, longest)
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block must not fail an otherwise good image
        pass
    return _reduced(_to_rgb(image), longest)


def pad_color(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """The processor's mean colour as 0..255 RGB, truncated as the original LLaVA's `process_images` does.

    LLaVA-1.5 was trained on squares padded with `int(x * 255)`: (122, 116, 104) for CLIP, not the rounded
    (123, 117, 104), so inference pads with the same colour the weights saw.
    """
    r, g, b = (int(channel * 255) for channel in image_mean[:3])
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
