"""The predictor's answers to requests it refuses as a whole or in part (4xx), shared by every route."""

from __future__ import annotations

from collections.abc import Sequence


class ItemErrors(ValueError):
    """Some items of a request are unusable (not an image, bad schema, ...): 400, one message per item."""

    def __init__(self, problems: Sequence[tuple[int, str]], what: str = "instance"):
        self.problems = list(problems)
        summary = "; ".join(f"{what} {index}: {message}" for index, message in self.problems[:3])
        more = len(self.problems) - 3
        super().__init__(summary + (f"; and {more} more" if more > 0 else ""))


class TooManyPixels(ValueError):
    """A request whose images hold more pixels together than one request may: 413, refused before decoding."""
