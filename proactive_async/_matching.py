"""Which target a conversation in an answer belongs to: the proof that a target was sent.

The rule, for every mix of recipients and contacts in one call:

* A recipient is ``sent`` only by a conversation that names its number (``messages[].to``,
  in any format: the same digits, or a national form that fits exactly one recipient of
  the call). One conversation proves one recipient; a number the call holds twice needs
  two conversations naming it.
* The answer never names a contact, so contacts are matched by count and order, and only
  when the whole answer adds up: as many conversations as targets (recipients plus
  contacts), every recipient proven by its number, so that the conversations left over
  are exactly one per contact, in request order. Otherwise no contact is ``sent``.
* Every other target ends ``unknown`` (the call succeeded: it may have been sent), with
  the reason, and carries the ids of the answer's conversations that proved nothing, so
  that they can be checked with the vendor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ._models import Conversation
from ._planner import PlannedTarget

__all__ = ["Match", "match_answer", "match_conversations"]


@dataclass(slots=True)
class Match:
    """What one successful answer proves.

    ``sent``: conversation ids per target line proven sent; ``unclaimed``: the ids of the
    conversations that proved nobody's (in answer order); ``reasons``: why each other
    target of the call is not proven, by line.
    """

    sent: dict[int, list[int]]
    unclaimed: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)


def match_conversations(
    targets: Sequence[PlannedTarget], conversations: list[Conversation]
) -> dict[int, list[int]]:
    """Conversation ids per target line proven sent (``match_answer(...).sent``)."""
    return match_answer(targets, conversations).sent


def match_answer(targets: Sequence[PlannedTarget], conversations: list[Conversation]) -> Match:
    """Match a successful answer to the targets of its call (the rule: module docstring)."""
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
                    return Match({target.line: [conversation.id]})
                if to:
                    digits = digits or _digits(recipient)
                    if _digits(to) == digits:
                        return Match({target.line: [conversation.id]})
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
    contacts = [t for t in targets if t.contact_id is not None]
    recipients = len(targets) - len(contacts)
    all_recipients_proven = len(ids) == recipients
    if contacts and all_recipients_proven and len(leftovers) == len(contacts):
        for target, conversation in zip(contacts, leftovers, strict=True):
            ids[target.line] = [conversation.id]
        leftovers = []
    match = Match(ids, [c.id for c in leftovers])
    if len(ids) == len(targets):
        return match
    answered = f"the call succeeded, but its answer held {_count(len(conversations))}"
    for target in targets:
        if target.line in ids:
            continue
        if not conversations:
            reason = "the call succeeded, but its answer held no conversation"
        elif target.contact_id is None:
            reason = f"{answered} and none of them was matched to this number"
        elif not all_recipients_proven:
            reason = (
                f"{answered} for {_count(len(targets), 'target')}, not all of the call's "
                "recipients were found by number, and a contact is matched only by count "
                "and order"
            )
        else:
            reason = (
                f"{answered} for {_count(len(targets), 'target')} "
                f"({_count(len(contacts), 'contact')}); a contact is matched only by count "
                "and order, so only when the counts agree"
            )
        match.reasons[target.line] = reason
    return match


def _count(n: int, noun: str = "conversation") -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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
