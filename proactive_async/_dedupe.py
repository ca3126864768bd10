"""The planner's dedupe set: nonzero 64-bit keys in flat arrays, each with its first line."""

from __future__ import annotations

from array import array
from typing import Final

__all__ = ["DedupeTable"]

_M64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads clustered keys
_LINE_TYPECODE: Final = "I" if array("I").itemsize == 4 else "L"
# The table is 64 segments, picked by the top 6 bits of a key's mixed hash; the rest of the
# hash picks the home slot in the segment (scaled to its capacity, any size).
_SEGMENT_BITS: Final = 6
_REST_BITS: Final = 64 - _SEGMENT_BITS
_REST_MASK: Final = (1 << _REST_BITS) - 1
_MIN_SEGMENT: Final = 8
_DEFAULT_TABLE: Final = 1024
# A table is sized up front for at most this many targets (about 17 MB); a larger input
# grows it as it goes, so that a huge file of duplicates does not hold slots for each line.
_PRESIZE_LIMIT: Final = 1 << 20


class DedupeTable:
    """A set of nonzero signed 64-bit keys, each with the first line that added it.

    Open addressing with linear probing over flat arrays (8-byte keys, 4-byte lines), split
    into 64 segments that grow one at a time, by half, at 80% full: 15-23 bytes per entry
    at any size (a ``set[str]`` of phone numbers: ~100), and a growth never holds more than
    one small segment twice.

    With ``checked``, an entry is a key and a check number (``insert(key, line, check)``):
    a key equal and a check different is another entry, so a key that is a hash (of a
    number and its content variables) never makes two different numbers duplicates.
    """

    __slots__ = ("_checks", "_keys", "_limits", "_lines", "_size", "_sizes")

    def __init__(self, capacity: int = _DEFAULT_TABLE, *, checked: bool = False) -> None:
        per_segment = max(_MIN_SEGMENT, -(-capacity >> _SEGMENT_BITS))
        count = 1 << _SEGMENT_BITS
        self._size = 0
        self._sizes = [0] * count
        self._keys = [_zeros("q", per_segment) for _ in range(count)]
        self._lines = [_zeros(_LINE_TYPECODE, per_segment) for _ in range(count)]
        self._checks = [_zeros("q", per_segment) for _ in range(count)] if checked else None
        self._limits = [_limit(per_segment)] * count

    @classmethod
    def sized_for(cls, expected: int | None, *, checked: bool = False) -> DedupeTable:
        """A table for about ``expected`` entries (None: unknown), sized up front so that it
        does not grow as they come (each growth rehashes a segment in Python): all of them
        under the 80% mark, with room for the segments that get more than their share."""
        if expected is None:
            return cls(checked=checked)
        return cls(max(_DEFAULT_TABLE, min(expected, _PRESIZE_LIMIT) * 11 // 8), checked=checked)

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """Slots allocated."""
        return sum(len(keys) for keys in self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays."""
        arrays = [*self._keys, *self._lines, *(self._checks or ())]
        return sum(len(a) * a.itemsize for a in arrays)

    def home(self, key: int) -> tuple[int, int]:
        """The segment of ``key`` and the slot in it where its probe starts."""
        mixed = (key * _GOLDEN) & _M64
        segment = mixed >> _REST_BITS
        return segment, ((mixed & _REST_MASK) * len(self._keys[segment])) >> _REST_BITS

    def segment_capacity(self, segment: int) -> int:
        """Slots allocated in ``segment``."""
        return len(self._keys[segment])

    def insert(self, key: int, line: int, check: int = 0) -> int | None:
        """Add ``key`` first seen at ``line``: ``None`` if it is new, else the first line.

        ``check`` is compared too in a ``checked`` table (ignored otherwise).
        """
        if key == 0:
            raise ValueError("0 marks an empty slot and cannot be a key")
        mixed = (key * _GOLDEN) & _M64
        segment = mixed >> _REST_BITS
        keys = self._keys[segment]
        capacity = len(keys)
        slot = ((mixed & _REST_MASK) * capacity) >> _REST_BITS
        checks = self._checks[segment] if self._checks is not None else None
        while True:
            found = keys[slot]
            if found == key and (checks is None or checks[slot] == check):
                return self._lines[segment][slot]
            if found == 0:
                break
            slot += 1
            if slot == capacity:
                slot = 0
        if self._sizes[segment] >= self._limits[segment]:
            self._grow(segment)
            slot = self._free_slot(segment, key)
        self._keys[segment][slot] = key
        self._lines[segment][slot] = line
        if self._checks is not None:
            self._checks[segment][slot] = check
        self._sizes[segment] += 1
        self._size += 1
        return None

    def _grow(self, segment: int) -> None:
        old_keys, old_lines = self._keys[segment], self._lines[segment]
        capacity = len(old_keys) + len(old_keys) // 2
        keys = self._keys[segment] = _zeros("q", capacity)
        lines = self._lines[segment] = _zeros(_LINE_TYPECODE, capacity)
        self._limits[segment] = _limit(capacity)
        old_checks = self._checks[segment] if self._checks is not None else None
        checks = None
        if self._checks is not None:
            checks = self._checks[segment] = _zeros("q", capacity)
        for index, key in enumerate(old_keys):
            if not key:
                continue
            slot = (((key * _GOLDEN) & _REST_MASK) * capacity) >> _REST_BITS
            while keys[slot]:
                slot += 1
                if slot == capacity:
                    slot = 0
            keys[slot] = key
            lines[slot] = old_lines[index]
            if checks is not None and old_checks is not None:
                checks[slot] = old_checks[index]

    def _free_slot(self, segment: int, key: int) -> int:
        keys = self._keys[segment]
        capacity = len(keys)
        slot = (((key * _GOLDEN) & _REST_MASK) * capacity) >> _REST_BITS
        while keys[slot]:
            slot += 1
            if slot == capacity:
                slot = 0
        return slot


def _zeros(typecode: str, count: int) -> array[int]:
    return array(typecode, bytes(array(typecode).itemsize * count))


def _limit(capacity: int) -> int:
    """Entries a segment of ``capacity`` slots takes before it grows (80%)."""
    return capacity * 4 // 5
