"""The one decode-step policy of the backends that decode themselves (transformers, TensorRT-LLM).

Both call `StepControl` around every decoding step, so an answer means the same on
either engine:
- `mask`, before a token is chosen: remember each row's log-probabilities under the
  model's own, unmasked distribution (the confidence), forbid special tokens, and let
  each constrained row's xgrammar matcher forbid what would break its JSON;
- `accept`, after: record the chosen token's log-probability, advance the row's matcher,
  and finish the row at end-of-sequence, at its own token budget, or when its grammar
  rejects the token (the row's JSON check then fails it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import xgrammar as xgr

from engine.backend import EngineError
from engine.structured import apply_bitmask

log = logging.getLogger(__name__)


class StepControl:
    """The per-step state of one batch of rows: grammar masks, log-probabilities, finished rows."""

    def __init__(
        self, matchers: Sequence[xgr.GrammarMatcher | None], max_new_tokens: Sequence[int], banned: Sequence[int], eos_id: int
    ) -> None:
        self.matchers = list(matchers)
        self.max_new = list(max_new_tokens)
        self.banned = torch.tensor(sorted(banned), dtype=torch.long)
        self.eos_id = eos_id
        self.logprobs: list[list[float]] = [[] for _ in self.matchers]
        self.finished = torch.zeros(len(self.matchers), dtype=torch.bool)
        self._last: torch.Tensor | None = None
        self._bitmask: torch.Tensor | None = None

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Before choosing: `scores` [rows, vocabulary] masked in place (and returned)."""
        self._last = torch.log_softmax(scores.float(), dim=-1)
        banned = self.banned[self.banned < scores.shape[-1]]
        scores[:, banned.to(scores.device)] = float("-inf")
        live = [i for i, m in enumerate(self.matchers) if m is not None and not self.finished[i] and not m.is_terminated()]
        if live:
            if self._bitmask is None:
                self._bitmask = xgr.allocate_token_bitmask(len(self.matchers), scores.shape[-1])
            for i in live:
                self.matchers[i].fill_next_token_bitmask(self._bitmask, i)  # type: ignore[union-attr]
            apply_bitmask(scores, self._bitmask, live)
        return scores

    def accept(self, tokens: Sequence[int]) -> torch.Tensor:
        """After choosing: each row's token recorded; returns which rows are finished."""
        if self._last is None:
            raise EngineError("a token was chosen before its step's logits were seen")
        for i, token in enumerate(tokens):
            if self.finished[i]:
                continue
            self.logprobs[i].append(float(self._last[i, token]))
            matcher = self.matchers[i]
            if matcher is not None and not matcher.is_terminated() and not matcher.accept_token(int(token)):
                log.warning("grammar rejected token %d on row %d; stopping the row", token, i)
                self.finished[i] = True
            if token == self.eos_id or len(self.logprobs[i]) >= self.max_new[i]:
                self.finished[i] = True
        return self.finished.clone()
