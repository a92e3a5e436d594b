"""Bad input at the real size: grammars that explode on a 32k vocabulary, a 100-megapixel image, out of memory on a batch."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from engine.backend import GenerationRequest
from engine.backends.hf import HFBackend
from engine.images import ImageError, image_size
from engine.structured import GrammarCache, SchemaError

IMAGE = Path(__file__).resolve().parents[1] / "data" / "images" / "red-circle.png"
SIDE = 10_000  # 100 megapixels


def _string_schema(**string: object) -> dict:
    return {"type": "object", "properties": {"a": {"type": "string", **string}}, "required": ["a"]}


@pytest.mark.parametrize(
    "schema, reason",
    [
        # 100,000 short values: 22 s to compile on this vocabulary without the limit.
        ({"enum": [f"value-{i}" for i in range(100_000)]}, "enum and const values total over 65,536 characters (limit)"),
        # 4,096 values of 200 characters: over a minute.
        ({"enum": ["y" * 200 + str(i) for i in range(4_096)]}, "enum and const values total over 65,536 characters (limit)"),
        # A counted repetition of a group: 25 s.
        (_string_schema(pattern="(ab|cd){1,10000}"), "pattern '(ab|cd){1,10000}' repeats 10,000 times, over the limit of 1,000"),
        (_string_schema(pattern="a" * 5_000), "pattern is 5,000 characters, over the 1,000-character limit"),
    ],
    ids=["many-enum-values", "long-enum-values", "counted-repetition", "long-pattern"],
)
def test_an_exploding_schema_fails_its_item_with_the_limit_named(real_backend, schema, reason):
    bad, good = real_backend.generate([
        GenerationRequest(image=IMAGE, task="json", schema=schema, max_new_tokens=8),
        GenerationRequest(image=IMAGE, task="caption", max_new_tokens=3),
    ])  # fmt: skip
    assert bad.finish_reason == "error" and reason in bad.error
    assert good.error is None and good.tokens == 3


def test_a_compilation_past_the_deadline_fails_with_the_reason_and_stays_failed(real_backend):
    """(ab|cd){1,1000} is under every limit but takes about 0.2 s to compile here, 20 times the deadline given."""
    grammars = GrammarCache(real_backend.tokenizer, real_backend.grammars.vocab_size, compile_timeout_s=0.01)
    schema = _string_schema(pattern="(ab|cd){1,1000}")
    message = "constrained decoding cannot use this schema: its grammar did not compile within 0.01 s (limit)"
    for _ in range(2):  # the second answer comes from the cache of failures
        with pytest.raises(SchemaError) as error:
            grammars.compile(schema)
        assert str(error.value) == message


def _png_of_zeros(path: Path, side: int) -> Path:
    """A real side x side RGB PNG (black), written row by row so it is never held whole."""
    compressor = zlib.compressobj(1)
    row = b"\0" * (1 + 3 * side)  # filter byte + pixels
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        for kind, body in [(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))]:
            out.write(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
        out.write(struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data)))
        out.write(struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    return path


def test_a_100_megapixel_image_is_refused_from_its_header(real_backend, tmp_path):
    path = _png_of_zeros(tmp_path / "huge.png", SIDE)
    reason = f"image is {SIDE}x{SIDE} = 100,000,000 pixels, over the {real_backend.image_limits.max_pixels:,}-pixel limit"
    with pytest.raises(ImageError, match=reason):
        image_size(path, real_backend.image_limits)
    huge, good = real_backend.generate([
        GenerationRequest(image=path, task="caption", max_new_tokens=3),
        GenerationRequest(image=IMAGE, task="caption", max_new_tokens=3),
    ])  # fmt: skip
    assert huge.finish_reason == "error" and huge.error.startswith(reason)
    assert good.error is None


class OutOfMemoryAbove(HFBackend):
    """FAKE for the out-of-memory condition only: `_run` raises torch's OutOfMemoryError for more than `fits` rows.

    Everything else is the real backend on the real-geometry model; rows that fit run for real.
    """

    def __init__(self, backend: HFBackend, fits: int) -> None:
        super().__init__(backend.loaded, max_batch_size=16)
        self.fits = fits
        self.sizes: list[int] = []

    def _run(self, rows):
        self.sizes.append(len(rows))
        if len(rows) > self.fits:
            raise torch.OutOfMemoryError(f"out of memory (fake): {len(rows)} rows do not fit, {self.fits} do")
        return super()._run(rows)


def _halvings() -> float:
    return REGISTRY.get_sample_value("llava_oom_batch_halvings_total") or 0.0


CAPTIONS = [GenerationRequest(image=IMAGE, task="caption", max_new_tokens=3, instruction=f"Describe image {i}.") for i in range(5)]


def test_out_of_memory_halves_the_batch_until_it_fits(real_backend):
    backend, before = OutOfMemoryAbove(real_backend, fits=2), _halvings()
    results = backend.generate(CAPTIONS)
    # 5 -> 2 + 3, 3 -> 1 + 2: two halvings, and every row runs in a chunk that fits.
    assert backend.sizes == [5, 2, 3, 1, 2] and _halvings() - before == 2
    assert [r.text for r in results] == [r.text for r in real_backend.generate(CAPTIONS)]


def test_an_item_that_does_not_fit_alone_fails_with_the_reason(real_backend):
    backend, before = OutOfMemoryAbove(real_backend, fits=0), _halvings()
    results = backend.generate(CAPTIONS[:2])
    assert backend.sizes == [2, 1, 1] and _halvings() - before == 1
    for result in results:
        assert result.finish_reason == "error"
        assert result.error == "out of memory even with the batch halved down to this item: out of memory (fake): 1 rows do not fit, 0 do"
