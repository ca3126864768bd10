"""Which target a conversation in an answer belongs to: the proof that a target was sent."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from ._models import Conversation
from ._planner import PlannedTarget

__all__ = ["match_conversations"]


def match_conversations(
    targets: Sequence[PlannedTarget], conversations: list[Conversation]
) -> dict[int, list[int]]:
    """Conversation ids per target line.

    A recipient is ``sent`` only by a conversation that names its number (``messages[].to``,
    in any format: the same digits, or a national form that fits exactly one recipient of
    the chunk). Contacts, whose number the answer does not show, take the conversations
    left over, in order. Whatever is left (a conversation for another number, or none at
    all) matches nobody: those targets end ``unknown``, never ``sent``.
    """
    if len(targets) == 1 and len(conversations) == 1:
        # A chunk of one recipient answered by one conversation naming it (every call of a
        # campaign with chunk_size=1): the answer of the general path, without its tables.
        target, conversation = targets[0], conversations[0]
        recipient = target.recipient
        if recipient is not None:
            digits = None
            for message in conversation.messages or ():
                to = message.to
                if to == recipient:  # the server echoed the E.164 number we sent
                    return {target.line: [conversation.id]}
                if to:
                    digits = digits or _digits(recipient)
                    if _digits(to) == digits:
                        return {target.line: [conversation.id]}
    by_digits: dict[str, list[PlannedTarget]] = {}
    for target in targets:
        if target.recipient is not None:
            by_digits.setdefault(_digits(target.recipient), []).append(target)
    ids: dict[int, list[int]] = {}
    leftovers: list[Conversation] = []
    for conversation in conversations:
        owner = _first_unmatched(by_digits, conversation, ids)
        if owner is None:
            leftovers.append(conversation)
        else:
            ids[owner.line] = [conversation.id]
    if leftovers and by_digits:
        leftovers = _match_national_forms(by_digits, leftovers, ids)
    if leftovers:
        contacts = [t for t in targets if t.contact_id is not None and t.line not in ids]
        for target, conversation in zip(contacts, leftovers, strict=False):
            ids[target.line] = [conversation.id]
    return ids


def _first_unmatched(
    by_digits: dict[str, list[PlannedTarget]], conversation: Conversation, ids: dict[int, list[int]]
) -> PlannedTarget | None:
    for to in conversation.recipients:
        for target in by_digits.get(_digits(to), ()):
            if target.line not in ids:
                return target
    return None


def _match_national_forms(
    by_digits: dict[str, list[PlannedTarget]],
    conversations: list[Conversation],
    ids: dict[int, list[int]],
) -> list[Conversation]:
    """Match ``to``s written without (or with another form of) the country code; the rest."""
    left: list[Conversation] = []
    for conversation in conversations:
        owner = None
        for to in conversation.recipients:
            owner = _sole_suffix_match(by_digits, _digits(to), ids)
            if owner is not None:
                break
        if owner is None:
            left.append(conversation)
        else:
            ids[owner.line] = [conversation.id]
    return left


def _sole_suffix_match(
    by_digits: dict[str, list[PlannedTarget]], to: str, ids: dict[int, list[int]]
) -> PlannedTarget | None:
    """The one waiting recipient whose number ends with ``to`` (or the reverse), if exactly one."""
    to = to.lstrip("0")  # a trunk or international prefix: 0xx, 00xx
    if len(to) < _MIN_NATIONAL_DIGITS:
        return None
    found: list[PlannedTarget] = []
    for digits, waiting in by_digits.items():
        if digits.endswith(to) or to.endswith(digits):
            found.extend(t for t in waiting if t.line not in ids)
    return found[0] if len(found) == 1 else None


_MIN_NATIONAL_DIGITS: Final = 8
_NON_DIGITS: Final = re.compile(r"\D+")


def _digits(text: str) -> str:
    if text[:1] == "+" and text[1:].isdigit():  # E.164, the common case
        return text[1:]
    return text if text.isdigit() else _NON_DIGITS.sub("", text)
