"""Distributed campaigns from Python, on any task queue: what ``enqueue``, ``worker``,
``status``, ``report`` and ``cancel`` and the arq and Celery jobs are made of.

Plan a file once into a PostgreSQL journal; it is cut into *slices* of about
``job_size`` records (whole calls), one job each. Put each pending slice on your own queue
(a job names a campaign and a slice, nothing more: no token, no password) and let your
workers run them; any worker may also take from the journal a slice nobody is running.
Needs ``proactive-async[postgres]``.

Usage::

    from proactive_async.distributed import SliceRunner, campaign_status, plan_campaign

    plan = await plan_campaign(
        "postgresql://app@db/campaigns?campaign=spring-sale",
        template=ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3),
        targets="recipients.csv",
        options=CampaignOptions(default_region="BR"),
    )
    for number in plan.pending_slices:
        my_queue.put(("spring-sale", number))        # at least once is enough

    # In each worker process: one client, one runner, for the process's life.
    runner = SliceRunner("postgresql://app@db/campaigns", client, concurrency=32)
    await runner.run("spring-sale", number)          # SliceBusyError: a live owner has it

Leases and the fence. A slice is sent by the one owner holding its *lease*: a row with
the owner's name, a fencing number that grows with every new owner, and an expiry the
owner renews every fifth of ``lease`` seconds. States of a record::

    planned --mark (fenced)--> in_flight --outcome--> sent | failed | unknown
    in_flight --release (certainly not processed)--> planned
    in_flight --a new owner's claim--> unknown (interrupted), or planned (resend_unknown)
    planned --cancel--> failed (cancelled)

Why no record is sent twice: a record is sent only by the owner whose *mark* moved it from
``planned`` to ``in_flight``, and the mark is one statement that checks, on the row it
changes, that it is still ``planned``, and, in the same statement, that this owner's lease
is unexpired with its fencing number, and that the campaign is neither cancelled nor
aborted. PostgreSQL row locks make two marks of one record serialise: the second finds it
``in_flight`` and does not return it. A new owner's claim needs the old lease to have
expired, bumps the fencing number (so every later mark of the old owner fails), and in the
same transaction settles what the old owner left in flight as ``unknown``: it may have
been processed, so it is never resent unless asked. Nothing depends on a session (no
advisory lock): a lost connection, a pooler, a failover change nothing. An owner that
froze (SIGSTOP, a pause, a cut network) checks its lease on its own monotonic clock before
every call, so on waking it sends nothing it no longer holds.
"""

from __future__ import annotations

from ._ops import CANCELLED, CampaignStatus, campaign_status, cancel_campaign, write_report
from ._plan import DEFAULT_JOB_SIZE, PlanResult, SendSettings, new_campaign_id, plan_campaign
from ._runner import DEFAULT_LEASE, SliceBusyError, SliceResult, SliceRunner
from ._worker import DEFAULT_SLICES, SliceWorker, check_journal

__all__ = [
    "CANCELLED",
    "DEFAULT_JOB_SIZE",
    "DEFAULT_LEASE",
    "DEFAULT_SLICES",
    "CampaignStatus",
    "PlanResult",
    "SendSettings",
    "SliceBusyError",
    "SliceResult",
    "SliceRunner",
    "SliceWorker",
    "campaign_status",
    "cancel_campaign",
    "check_journal",
    "new_campaign_id",
    "plan_campaign",
    "write_report",
]
