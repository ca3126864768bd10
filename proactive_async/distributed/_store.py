"""Every SQL statement of a distributed campaign, next to the tables it adds.

The tables a one-process campaign uses (``proactive_campaign``, ``proactive_record``,
``proactive_chunk``) are the PostgreSQL journal's; a distributed campaign adds columns to
them and one table, ``proactive_slice``: a job's worth of records (``--job-size``), with
its lease.

The fence (see the package docstring for the state machine): a record moves ``planned ->
in_flight`` only in ``MARK``, one statement that also checks that the slice's lease is
still this owner's (owner and fencing number match, not expired) and that the campaign is
neither cancelled nor aborted. A line that statement did not return is not sent. Nothing
here depends on session state (no advisory lock, no temporary table, no prepared
statement kept across transactions), so it holds behind a transaction-mode pooler.
"""

from __future__ import annotations

from typing import Final

import msgspec

from .._records import OutcomeError
from ..journal._pg_database import index_sql, outcome_json_sql

__all__ = [
    "ABORT",
    "ANALYZE",
    "CANCELLED",
    "CANCELLED_ERROR",
    "CANCEL_CAMPAIGN",
    "CANCEL_PLANNED",
    "CANCEL_REST",
    "CLAIM",
    "CLOSE_SETTLED_SLICES",
    "FINISH_CAMPAIGN",
    "FINISH_SLICE",
    "HELD",
    "IN_FLIGHT_COUNT",
    "IN_FLIGHT_OF_SLICE",
    "LOAD_CHUNKS",
    "LOAD_RECORDS",
    "MARK",
    "ONE_PROCESS_HEAD",
    "RECORD",
    "RELEASE",
    "RENEW",
    "REPLAN_IN_FLIGHT",
    "REPORT",
    "SCHEMA",
    "SETTLE_DEAD",
    "SLICE_STATE",
    "STATUS_COUNTS",
    "STATUS_HEAD",
    "STATUS_SLICES",
    "SWEEP",
    "WRITE",
]

SCHEMA: Final = (
    # Databases created before slices existed get the new columns once.
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_schema = current_schema()
                       AND table_name = 'proactive_record' AND column_name = 'slice') THEN
            ALTER TABLE proactive_record ADD COLUMN slice bigint, ADD COLUMN fence bigint;
            ALTER TABLE proactive_chunk ADD COLUMN slice bigint;
            ALTER TABLE proactive_campaign ADD COLUMN slices bigint NOT NULL DEFAULT 0,
                ADD COLUMN aborted_at timestamptz, ADD COLUMN abort_reason text;
        END IF;
    END $$""",
    """CREATE TABLE IF NOT EXISTS proactive_slice (
        campaign_id text NOT NULL REFERENCES proactive_campaign (id) ON DELETE CASCADE,
        slice bigint NOT NULL,
        records bigint NOT NULL,
        state text NOT NULL DEFAULT 'open',
        owner text,
        fence bigint NOT NULL DEFAULT 0,
        lease_until timestamptz,
        PRIMARY KEY (campaign_id, slice)
    )""",
    index_sql("proactive_slice_open", "proactive_slice (campaign_id, slice) WHERE state = 'open'"),
    index_sql(
        "proactive_record_slice",
        "proactive_record (campaign_id, slice, line) WHERE slice IS NOT NULL",
    ),
)

CANCELLED: Final = "cancelled"
"""``OutcomeError.kind`` of a record not sent because its campaign was cancelled."""
CANCELLED_ERROR: Final = OutcomeError(
    kind=CANCELLED, message="not sent: the campaign was cancelled"
)
_CANCELLED_OUTCOME: Final = (
    outcome_json_sql(
        line="r.line",
        status="'failed'",
        recipient="r.recipient",
        contact_id="r.contact_id",
        error="'{}'::json".format(msgspec.json.encode(CANCELLED_ERROR).decode().replace("'", "''")),
    )
    + "::text"
)
"""An Outcome's JSON for a record of row ``r`` not sent because of a cancel, built by SQL
from ``Outcome``'s own fields."""

# The lease is this owner's: checked in the same statement as the change it guards.
_HOLDS: Final = """EXISTS (SELECT 1 FROM proactive_slice s
    WHERE s.campaign_id = %(campaign)s AND s.slice = %(slice)s AND s.owner = %(owner)s
    AND s.fence = %(fence)s AND s.lease_until > clock_timestamp())"""
_LIVE_CAMPAIGN: Final = """EXISTS (SELECT 1 FROM proactive_campaign c
    WHERE c.id = %(campaign)s AND c.cancelled_at IS NULL AND c.aborted_at IS NULL)"""

CLAIM: Final = """
    UPDATE proactive_slice s SET owner = %(owner)s, fence = fence + 1,
        lease_until = clock_timestamp() + %(lease)s * interval '1 second'
    WHERE s.campaign_id = %(campaign)s AND s.slice = %(slice)s AND s.state = 'open'
    AND (s.lease_until IS NULL OR s.lease_until <= clock_timestamp()
         OR s.owner = %(owner)s)
    AND EXISTS (SELECT 1 FROM proactive_campaign c
                WHERE c.id = s.campaign_id AND c.aborted_at IS NULL)
    RETURNING s.fence
"""
"""Take a slice nobody holds (never taken, given back, or its lease expired): a new fence.
An owner name is new for every claim, so only a claim run again (its commit's answer was
lost) finds its own name there."""

SLICE_STATE: Final = """
    SELECT s.state, greatest(0, extract(epoch FROM s.lease_until - clock_timestamp())),
        c.aborted_at IS NOT NULL
    FROM proactive_slice s JOIN proactive_campaign c ON c.id = s.campaign_id
    WHERE s.campaign_id = %(campaign)s AND s.slice = %(slice)s
"""
"""Why a claim failed: done, held (for how many more seconds), or the campaign aborted."""

RENEW: Final = f"""
    UPDATE proactive_slice s
    SET lease_until = clock_timestamp() + %(lease)s * interval '1 second'
    WHERE s.campaign_id = %(campaign)s AND s.slice = %(slice)s AND s.owner = %(owner)s
    AND s.fence = %(fence)s AND s.lease_until > clock_timestamp()
    RETURNING NOT {_LIVE_CAMPAIGN}
"""
"""Extend a lease still held; returns whether the campaign was cancelled or aborted."""

IN_FLIGHT_OF_SLICE: Final = """
    SELECT line, recipient, contact_id FROM proactive_record
    WHERE campaign_id = %(campaign)s AND slice = %(slice)s AND state = 'in_flight'
    ORDER BY line FOR UPDATE
"""
"""Records a previous owner marked in flight and never settled (it died or froze)."""

SETTLE_DEAD: Final = """
    UPDATE proactive_record r SET state = u.state, outcome = u.outcome, fence = %(fence)s
    FROM unnest(%(lines)b::bigint[], %(states)b::text[], %(outcomes)b::text[])
        AS u (line, state, outcome)
    WHERE r.campaign_id = %(campaign)s AND r.slice = %(slice)s AND r.line = u.line
    AND r.state = 'in_flight'
"""
"""A new owner's verdict on its predecessor's records in flight (``unknown``), in the
transaction of its claim."""

REPLAN_IN_FLIGHT: Final = f"""
    UPDATE proactive_record SET state = 'planned', fence = NULL
    WHERE campaign_id = %(campaign)s AND slice = %(slice)s AND state = 'in_flight'
    AND {_LIVE_CAMPAIGN}
"""
"""With ``resend_unknown``: a predecessor's records in flight are sent again, while the
campaign runs (in a cancelled one they end ``unknown``: never "not sent")."""

LOAD_CHUNKS: Final = """
    SELECT chunk, variables FROM proactive_chunk
    WHERE campaign_id = %(campaign)s AND slice = %(slice)s ORDER BY chunk
"""
LOAD_RECORDS: Final = """
    SELECT line, chunk, recipient, contact_id FROM proactive_record
    WHERE campaign_id = %(campaign)s AND slice = %(slice)s AND state = 'planned'
    ORDER BY line
"""

MARK: Final = f"""
    UPDATE proactive_record r SET state = 'in_flight', fence = %(fence)s
    FROM unnest(%(marked)b::bigint[]) AS m (line)
    WHERE r.campaign_id = %(campaign)s AND r.line = m.line AND r.slice = %(slice)s
    AND (r.state = 'planned' OR (r.state = 'in_flight' AND r.fence = %(fence)s))
    AND {_HOLDS} AND {_LIVE_CAMPAIGN}
    RETURNING r.line
"""
"""The fence: ``planned -> in_flight`` while the lease is this owner's and the campaign
runs. Lines are looked up one by one in the primary key (a join with the array), so a
mark costs the same in a campaign of a thousand records as in one of millions. A line
this owner already marked is returned again (a retried commit whose first answer was
lost, or a bisected chunk's half), never a line another owner holds."""

HELD: Final = f"""
    SELECT r.line FROM unnest(%(marked)b::bigint[]) AS m (line)
    JOIN proactive_record r ON r.campaign_id = %(campaign)s AND r.line = m.line
    WHERE r.slice = %(slice)s AND r.state = 'in_flight' AND r.fence = %(fence)s
    AND {_HOLDS} AND {_LIVE_CAMPAIGN}
"""
"""``MARK``'s fence read again before a retry, without a write (an UPDATE per retry left
a dead row version per record under 429 pressure): the lines still in flight under this
owner's fence, while its lease holds and the campaign runs."""

RECORD: Final = """
    UPDATE proactive_record r SET state = u.state, outcome = u.outcome::text
    FROM json_to_recordset(%(rows)s::json) AS u (line bigint, state text, outcome json)
    WHERE r.campaign_id = %(campaign)s AND r.line = u.line
    AND r.state = 'in_flight' AND r.fence = %(fence)s
"""
"""Final outcomes of this owner's calls; the first final outcome of a record wins. The
batch is one JSON array of ``{line, state, outcome}``; a ``json`` value keeps its text as
given, so each outcome is stored exactly as encoded."""

RELEASE: Final = f"""
    UPDATE proactive_record r
    SET state = CASE WHEN c.cancelled_at IS NULL THEN 'planned' ELSE 'failed' END,
        outcome = CASE WHEN c.cancelled_at IS NULL THEN NULL ELSE {_CANCELLED_OUTCOME} END,
        fence = NULL
    FROM unnest(%(released)b::bigint[]) AS m (line), proactive_campaign c
    WHERE c.id = %(campaign)s AND r.campaign_id = %(campaign)s AND r.line = m.line
    AND r.state = 'in_flight' AND r.fence = %(fence)s
"""
"""Lines whose call was certainly not processed go back to ``planned``, or, once the
campaign is cancelled, end ``failed`` (cancelled): a cancel that ran while they were in
flight left them to their owner."""

CANCEL_REST: Final = f"""
    UPDATE proactive_record r SET state = 'failed', outcome = {_CANCELLED_OUTCOME}
    FROM proactive_campaign c
    WHERE c.id = %(campaign)s AND c.cancelled_at IS NOT NULL
    AND r.campaign_id = %(campaign)s AND r.slice = %(slice)s AND r.state = 'planned'
    AND {_HOLDS}
"""
"""A cancelled campaign's records of the slice still ``planned`` (released back after the
cancel ran) end cancelled too: run by an owner when it claims and gives back a slice."""

WRITE: Final = f"""
    WITH recorded AS ({RECORD}), released AS ({RELEASE}), marked AS ({MARK})
    SELECT line FROM marked
"""
"""A batch of outcomes, releases and marks in one statement: one round trip, and one
transaction. Its parts see the same snapshot, so a batch that changes one line twice is
written with the three statements in order instead."""

FINISH_SLICE: Final = """
    UPDATE proactive_slice s SET owner = NULL, lease_until = NULL,
        state = CASE WHEN EXISTS (SELECT 1 FROM proactive_record r
            WHERE r.campaign_id = s.campaign_id AND r.slice = s.slice
            AND r.state IN ('planned', 'in_flight')) THEN 'open' ELSE 'done' END
    WHERE s.campaign_id = %(campaign)s AND s.slice = %(slice)s AND s.owner = %(owner)s
    AND s.fence = %(fence)s
    RETURNING s.state
"""
"""Give the lease back: the slice is ``done`` when every record of it is final."""

FINISH_CAMPAIGN: Final = """
    UPDATE proactive_campaign c SET finished_at = now()
    WHERE c.id = %(campaign)s AND c.finished_at IS NULL AND c.planned_at IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM proactive_slice s
                    WHERE s.campaign_id = c.id AND s.state = 'open')
"""

STATUS_HEAD: Final = """
    SELECT cancelled_at IS NOT NULL, planned_at IS NOT NULL, slices,
        CASE WHEN aborted_at IS NOT NULL THEN coalesce(abort_reason, 'aborted') END
    FROM proactive_campaign WHERE id = %(campaign)s
"""
ONE_PROCESS_HEAD: Final = """
    SELECT cancelled_at IS NOT NULL, planned_at IS NOT NULL, 0, NULL::text
    FROM proactive_campaign WHERE id = %(campaign)s
"""
"""``STATUS_HEAD`` where the distributed tables were never made (one-process campaigns)."""
STATUS_COUNTS: Final = """
    SELECT state, count(*) FROM proactive_record WHERE campaign_id = %(campaign)s
    GROUP BY state
"""
STATUS_SLICES: Final = """
    SELECT count(*) FILTER (WHERE state = 'done'),
        count(DISTINCT split_part(owner, '/', 1) || '/' || split_part(owner, '/', 2))
            FILTER (WHERE lease_until > clock_timestamp())
    FROM proactive_slice WHERE campaign_id = %(campaign)s
"""
"""Slices done, and the worker processes (host/pid of an owner) holding a live lease."""

CANCEL_CAMPAIGN: Final = """
    UPDATE proactive_campaign SET cancelled_at = coalesce(cancelled_at, now())
    WHERE id = %(campaign)s RETURNING id
"""
CANCEL_PLANNED: Final = f"""
    UPDATE proactive_record r SET state = 'failed', outcome = {_CANCELLED_OUTCOME}
    WHERE r.campaign_id = %(campaign)s AND r.state = 'planned'
"""
IN_FLIGHT_COUNT: Final = """
    SELECT count(*) FROM proactive_record WHERE campaign_id = %(campaign)s
    AND state = 'in_flight'
"""
CLOSE_SETTLED_SLICES: Final = """
    UPDATE proactive_slice s SET state = 'done'
    WHERE s.campaign_id = %(campaign)s AND s.state = 'open'
    AND NOT EXISTS (SELECT 1 FROM proactive_record r
        WHERE r.campaign_id = s.campaign_id AND r.slice = s.slice
        AND r.state IN ('planned', 'in_flight'))
"""
REPORT: Final = """
    SELECT outcome FROM proactive_record WHERE campaign_id = %(campaign)s
    AND outcome IS NOT NULL ORDER BY line
"""

ANALYZE: Final = "ANALYZE proactive_record, proactive_chunk, proactive_slice"
"""After planning: the planner's statistics must know how many records a campaign has,
or it scans a whole campaign for every batch of outcomes instead of looking them up."""

ABORT: Final = """
    UPDATE proactive_campaign SET aborted_at = coalesce(aborted_at, now()),
        abort_reason = coalesce(abort_reason, %(reason)s)
    WHERE id = %(campaign)s
"""
"""A fatal answer (401, 403, TLS): no worker takes a slice of it until it is enqueued again."""

SWEEP: Final = """
    SELECT s.campaign_id, s.slice FROM proactive_slice s
    JOIN proactive_campaign c ON c.id = s.campaign_id
    WHERE s.state = 'open' AND c.aborted_at IS NULL AND c.planned_at IS NOT NULL
    AND (s.lease_until <= clock_timestamp()
         OR (s.lease_until IS NULL AND (s.fence > 0 OR c.cancelled_at IS NOT NULL
             OR c.planned_at < clock_timestamp() - %(unclaimed)s * interval '1 second')))
    ORDER BY s.fence DESC, random()
    LIMIT %(limit)s
"""
"""Slices a live worker takes from the journal, not from its queue: a lease that expired
(its owner died or froze), a slice given back, or one nobody took for ``unclaimed``
seconds after planning (its job was lost with the queue)."""
