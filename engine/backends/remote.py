"""The remote backend: the labeler's workers calling the KServe predictor over HTTP.

`engine.backends.load_backend` returns this for a predictor URL (the worker's engine.url), so a worker switches from
in-process to remote with one setting and no code change. A batch goes out as one v1
call (split only where it would pass the server's body limit) on a pooled httpx client;
connection errors, timeouts, 5xx and 429 are retried with full-jitter exponential
backoff, and when the retries run out the whole batch raises `TransientEngineError`
for the caller to retry later. Items the server refuses (not an image, bad schema: a
400 listing them) come back as failed results and the rest are sent again, so one bad
image fails that item, not the batch.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from engine.backend import EngineError, GenerationRequest, GenerationResult, TransientEngineError
from engine.images import image_size
from engine.settings import ImageLimits, ServingSettings
from engine.wire import encode_instance, result_from_wire

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RemoteBackend:
    """A `Backend` whose `generate` is a call to a predictor's v1 route."""

    def __init__(
        self,
        url: str,
        *,
        settings: ServingSettings | None = None,
        image_limits: ImageLimits | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings or ServingSettings()
        self.image_limits = image_limits or ImageLimits()
        self.base_url = url.rstrip("/")
        self.name = self.settings.model_name
        timeout = httpx.Timeout(self.settings.client_timeout_s, connect=min(10.0, self.settings.client_timeout_s))
        key = self.settings.api_key
        self.client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key.get_secret_value()}"} if key else None,
            timeout=timeout,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            transport=transport,
        )
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        """The served checkpoint's name (the OpenAI model card's `root`), fetched once."""
        if self._model_id is None:
            cards = self._call("GET", "/openai/v1/models").json().get("data", [])
            card = next((c for c in cards if c.get("id") == self.name), None)
            if card is None:
                raise EngineError(f"the predictor at {self.base_url} does not serve a model named {self.name!r}")
            self._model_id = str(card.get("root") or card["id"])
        return self._model_id

    def close(self) -> None:
        self.client.close()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; unusable items fail alone; an unreachable predictor raises."""
        results: list[GenerationResult | None] = [None] * len(requests)
        ready: list[tuple[int, dict[str, Any], int]] = []  # (position, instance, pixels)
        for index, request in enumerate(requests):
            try:
                _ = request.prompt
                data = self._image_bytes(request.image)
                width, height = image_size(data, self.image_limits)  # the header only: the server's pixel budget
                ready.append((index, encode_instance(request, data), width * height))
            except (OSError, ValueError) as exc:
                results[index] = GenerationResult.failure(str(exc))
        for chunk in self._chunks(ready):
            for index, result in self._send([(index, instance) for index, instance, _ in chunk]):
                results[index] = result
        return results  # type: ignore[return-value]

    def _image_bytes(self, image: bytes | str | Path) -> bytes:
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
        else:
            path = Path(image)
            if not path.is_file():
                raise ValueError(f"no such image file: {path}")
            data = path.read_bytes()
        if len(data) > self.image_limits.max_bytes:
            raise ValueError(f"image is over the {self.image_limits.max_bytes:,}-byte limit")
        return data

    def _chunks(self, ready: list[tuple[int, dict[str, Any], int]]) -> list[list[tuple[int, dict[str, Any], int]]]:
        """Whole batches, split only to stay under the server's body, item and pixel limits."""
        budget = self.settings.max_request_bytes - 1024
        pixel_budget = self.image_limits.max_request_pixels
        chunks: list[list[tuple[int, dict[str, Any], int]]] = []
        current: list[tuple[int, dict[str, Any], int]] = []
        size = pixels = 0
        for entry in ready:
            entry_size = len(entry[1]["image"]["b64"]) + 512
            full = size + entry_size > budget or pixels + entry[2] > pixel_budget
            if current and (full or len(current) >= self.settings.max_items_per_request):
                chunks.append(current)
                current, size, pixels = [], 0, 0
            current.append(entry)
            size += entry_size
            pixels += entry[2]
        if current:
            chunks.append(current)
        return chunks

    def _send(self, chunk: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, GenerationResult]]:
        """Predictions for a chunk; items the server names as unusable fail and the rest are sent again."""
        done: list[tuple[int, GenerationResult]] = []
        while chunk:
            response = self._call("POST", f"/v1/models/{self.name}:predict", json={"instances": [i for _, i in chunk]})
            if response.status_code == 200:
                predictions = response.json()["predictions"]
                if len(predictions) != len(chunk):
                    raise EngineError(f"the predictor answered {len(predictions)} predictions for {len(chunk)} instances")
                done.extend((index, result_from_wire(p)) for (index, _), p in zip(chunk, predictions))
                return done
            bad = {i: message for i, message in _item_errors(response).items() if 0 <= i < len(chunk)}
            if not bad:
                raise EngineError(f"the predictor refused the request ({response.status_code}): {_message(response)}")
            done.extend((chunk[i][0], GenerationResult.failure(message)) for i, message in bad.items())
            chunk = [entry for i, entry in enumerate(chunk) if i not in bad]
        return done

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, after retrying connection problems, 5xx and 429; `TransientEngineError` once out of tries."""
        attempts = self.settings.client_retries + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(random.uniform(0, self.settings.client_backoff_s * 2 ** (attempt - 1)))
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                log.warning("predictor %s%s: %s (attempt %d/%d)", self.base_url, path, problem, attempt + 1, attempts)
                continue
            if response.status_code not in RETRY_STATUS:
                return response
            problem = f"HTTP {response.status_code}: {_message(response)}"
            log.warning("predictor %s%s: %s (attempt %d/%d)", self.base_url, path, problem, attempt + 1, attempts)
        raise TransientEngineError(f"predictor at {self.base_url} failed {attempts} times; last: {problem}")


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text[:300]
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error)


def _item_errors(response: httpx.Response) -> dict[int, str]:
    """The server's per-item refusals (a 400 with `errors: [{index, error}]`), by position in the call."""
    if response.status_code != 400:
        return {}
    try:
        errors = response.json().get("errors") or []
        return {int(e["index"]): str(e["error"]) for e in errors}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
