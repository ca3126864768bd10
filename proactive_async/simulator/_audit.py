"""What the simulator processed: per-target counts, so a test can prove "no duplicate"."""

from __future__ import annotations

import collections
from collections.abc import Iterable

__all__ = ["Audit"]


class Audit:
    """Counts of what the server processed (created conversations for), per target.

    Usage::

        assert sim.audit.duplicates() == {}
        assert sim.audit.count("+5511999990000") == 1

    A target's key is the recipient string exactly as received, or ``"contact:<id>"`` for
    a contact id. A call that carries the same target twice counts it twice.

    Attributes:
        total_processed: targets processed, over all calls.
        calls: requests that reached the endpoint (every outcome, including 401 and 400).
        faults: injected faults by kind (the ``Faults`` field names) plus ``"rate_limit"``
            for calls refused by the token bucket.
        statuses: HTTP statuses answered by the endpoint (drops answer nothing).
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self.total_processed: int = 0
        self.calls: int = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()

    def count(self, target: str) -> int:
        """How many times ``target`` was processed."""
        return self._counts.get(target, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy of every target's count."""
        return dict(self._counts)

    def duplicates(self) -> dict[str, int]:
        """The targets processed more than once, with their counts."""
        return {target: n for target, n in self._counts.items() if n > 1}

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._counts.clear()
        self.total_processed = 0
        self.calls = 0
        self.faults.clear()
        self.statuses.clear()

    def summary(self) -> str:
        """One line: calls, targets processed, duplicated targets."""
        return (
            f"calls={self.calls} processed={self.total_processed} "
            f"duplicates={len(self.duplicates())}"
        )

    def record(self, targets: Iterable[str]) -> None:
        """Count each of ``targets`` as processed once."""
        counts = self._counts
        n = 0
        for target in targets:
            counts[target] = counts.get(target, 0) + 1
            n += 1
        self.total_processed += n

    def __repr__(self) -> str:
        return f"<Audit {self.summary()}>"
