"""Generative answers' texts, kept for a while for feedback that scores them against a reference (ROUGE-L).

A text is kept ``keep_s`` seconds (the router's ``--feedback-pending-s``: as long as feedback may arrive), at
most ``max_size`` of them, and dropped at once when its feedback arrives. Not thread-safe: the recorder holds
its lock around every call.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class AnswerTexts:
    """Texts by request id, oldest first (see the module docstring)."""

    def __init__(self, keep_s: float, max_size: int):
        self.keep_s, self.max_size = keep_s, max_size
        self._texts: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def keep(self, request_id: str, text: str, now: float | None = None) -> None:
        """Keep ``text``; drop the texts older than ``keep_s`` and the oldest beyond ``max_size``."""
        now = time.monotonic() if now is None else now
        self._texts[request_id] = (now, text)
        while self._texts:
            oldest, (at, _) = next(iter(self._texts.items()))
            if now - at <= self.keep_s and len(self._texts) <= self.max_size:
                break
            del self._texts[oldest]

    def get(self, request_id: str, now: float | None = None) -> str | None:
        """The kept text, or None (never kept, dropped, or older than ``keep_s``)."""
        kept = self._texts.get(request_id)
        now = time.monotonic() if now is None else now
        return kept[1] if kept is not None and now - kept[0] <= self.keep_s else None

    def drop(self, request_id: str) -> None:
        self._texts.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._texts)
