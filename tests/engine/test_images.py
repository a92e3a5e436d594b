"""Every image enters through one loader: it refuses bad input with a clear message and normalises the rest."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.images import ImageError, expand_to_square, image_size, load_image, pad_color
from engine.settings import ImageLimits


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in a few bytes: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"%PDF-1.4 this is not an image", "not an image"),
        (encode(Image.new("RGB", (64, 64), "red"))[:60], "corrupt or truncated image"),
        (encode(Image.new("RGB", (64, 64), "red"), "JPEG")[:200], "corrupt or truncated image"),
        (png_header_only(100_000, 100_000), "decompression-bomb guard"),
        (png_header_only(9_000, 9_000), "81,000,000 pixels, over the 40,000,000-pixel limit"),
    ],
    ids=["empty", "not-image", "truncated-png", "truncated-jpeg", "bomb-pillow", "bomb-ours"],
)
def test_bad_bytes_are_refused_with_a_reason(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_limits_come_from_settings():
    data = encode(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageError, match="10,000 pixels, over the 5,000-pixel limit"):
        load_image(data, ImageLimits(max_pixels=5_000))
    with pytest.raises(ImageError, match="over the 10-byte limit"):
        load_image(data, ImageLimits(max_bytes=10))


def test_paths_load_and_missing_paths_are_named(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8), "blue")))
    assert load_image(path).getpixel((0, 0)) == (0, 0, 255)
    assert load_image(str(path)).size == (8, 8)
    with pytest.raises(ImageError, match="no such image file: .*missing.png"):
        load_image(tmp_path / "missing.png")


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("L", (4, 4), 128), (128, 128, 128)),
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
        (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),  # transparent over white
        (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (4, 4), (50, 255)), (50, 50, 50)),
        (Image.new("RGB", (4, 4), (204, 102, 51)).convert("P"), (204, 102, 51)),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), (255, 255, 255)),
        (Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16)), (100, 100, 100)),
    ],
    ids=["L", "1", "RGBA-transparent", "RGBA-opaque", "LA", "P", "CMYK", "16-bit-white", "16-bit-grey"],
)
def test_modes_become_8bit_rgb(image, expected):
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    loaded = load_image(encode(image, fmt))
    assert loaded.mode == "RGB"
    assert tuple(abs(a - b) <= 2 for a, b in zip(loaded.getpixel((1, 1)), expected)) == (True, True, True)


def test_palette_with_transparency_is_flattened():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    assert load_image(encode(image, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)


def test_animation_takes_the_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "green", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    red, green, blue = load_image(data).getpixel((4, 4))
    assert red > 200 and green < 50 and blue < 50


def test_expand_to_square_pads_with_the_mean_colour_and_keeps_the_image_centred():
    color = pad_color([0.48145466, 0.4578275, 0.40821073])
    wide = expand_to_square(Image.new("RGB", (40, 20), (255, 0, 0)), color)
    assert wide.size == (40, 40)
    assert wide.getpixel((20, 0)) == color and wide.getpixel((20, 39)) == color
    assert wide.getpixel((20, 20)) == (255, 0, 0) and wide.getpixel((0, 5)) == color
    assert wide.getpixel((0, 15)) == (255, 0, 0)
    tall = expand_to_square(Image.new("RGB", (10, 30), (0, 0, 255)), color)
    assert tall.size == (30, 30) and tall.getpixel((0, 15)) == color and tall.getpixel((15, 15)) == (0, 0, 255)
    square = Image.new("RGB", (16, 16))
    assert expand_to_square(square, color) is square


def test_pad_color_truncates_the_mean_as_the_original_llava_does():
    """LLaVA's `process_images` pads with `tuple(int(x*255) for x in image_mean)`: CLIP's mean is (122, 116, 104), not (123, 117, 104)."""
    clip_mean = [0.48145466, 0.4578275, 0.40821073]
    assert pad_color(clip_mean) == (122, 116, 104) == tuple(int(x * 255) for x in clip_mean)
    assert pad_color([0.999, 0.5, 0.0, 0.7]) == (254, 127, 0)  # rounding would give 255 and 128; a 4th channel is ignored


def test_image_size_reads_the_header_only():
    bomb = png_header_only(5_000, 4_000)  # declares 20 MP, holds 64 bytes of pixels
    assert image_size(bomb) == (5_000, 4_000)
    with pytest.raises(ImageError, match="corrupt or truncated image"):
        load_image(bomb)
    with pytest.raises(ImageError, match="over the 1,000-pixel limit"):
        image_size(bomb, ImageLimits(max_pixels=1_000))
    with pytest.raises(ImageError, match="not an image"):
        image_size(b"%PDF-1.4")


def palette_image(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("P", size, 1)
    image.putpalette([0, 0, 0, *colour] + [0] * 762)
    return image


RED = (200, 40, 40)


@pytest.mark.parametrize(
    "image, fmt, expected",
    [
        (Image.new("RGB", (3000, 1500), RED), "PNG", (2048, 1024)),
        (Image.new("RGB", (4096, 8192), RED), "JPEG", (1024, 2048)),  # decoded at 1/2 scale (draft mode)
        (Image.new("RGB", (6000, 3000), RED), "JPEG", (2048, 1024)),
        (Image.new("RGBA", (2500, 2500), (*RED, 255)), "PNG", (2048, 2048)),
        (palette_image((3000, 600), RED), "PNG", (2048, 410)),
        (Image.fromarray(np.full((100, 4100), 257 * RED[0], dtype=np.uint16)), "PNG", (2048, 50)),
    ],
    ids=["png", "jpeg-exact-half", "jpeg", "rgba", "palette", "16-bit"],
)
def test_images_over_reduce_above_are_reduced_as_they_are_decoded(image, fmt, expected):
    loaded = load_image(encode(image, fmt))
    assert loaded.size == expected and loaded.mode == "RGB"
    colour = RED if image.mode != "I;16" else (RED[0],) * 3
    assert all(abs(a - b) <= 3 for a, b in zip(loaded.getpixel((expected[0] // 2, expected[1] // 2)), colour))


def test_the_reduction_follows_the_setting_and_keeps_the_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.new("RGB", (1200, 400), "red"), "JPEG", exif=exif.tobytes())
    assert load_image(data, ImageLimits(reduce_above=600)).size == (200, 600)


@pytest.mark.parametrize("size", [(2048, 2048), (2048, 700), (336, 336), (97, 61)])
def test_images_up_to_reduce_above_give_the_pixel_values_they_always_did(tiny_backend, size):
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    loaded = load_image(data)
    assert loaded.size == size and np.array_equal(np.asarray(loaded), pixels)
    processor = tiny_backend.loaded.processor.image_processor
    colour = pad_color(processor.image_mean)
    ours = processor(images=[expand_to_square(loaded, colour)], return_tensors="pt")["pixel_values"]
    plain = processor(images=[expand_to_square(Image.fromarray(pixels), colour)], return_tensors="pt")["pixel_values"]
    assert np.array_equal(ours.numpy(), plain.numpy())
