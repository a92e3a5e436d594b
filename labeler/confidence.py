"""Confidence as a person reads it: the geometric-mean probability of an answer's tokens.

The engine stores a prediction's confidence as its mean token log-probability (what the
review queue orders by); people read `exp` of it, a probability between 0 and 1.
"""

from __future__ import annotations

import math


def probability(mean_logprob: float | None) -> float | None:
    """The geometric-mean token probability of a mean token log-probability (None stays None)."""
    return None if mean_logprob is None else math.exp(mean_logprob)


def mean_logprob(probability: float | None) -> float | None:
    """The mean token log-probability of a geometric-mean probability (0 maps to -inf)."""
    if probability is None:
        return None
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"a probability is between 0 and 1, got {probability}")
    return math.log(probability) if probability > 0 else float("-inf")
