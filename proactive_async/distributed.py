"""Distributed campaigns from Python, on any task queue: what ``enqueue``, ``status``,
``report`` and ``cancel`` and the arq and Celery jobs are made of.

Plan a file once into a PostgreSQL journal, put each pending chunk on your own queue
(the job names a campaign and a chunk, nothing more), and let your workers run them;
the journal's fence keeps a chunk delivered twice from being sent twice. Needs
``proactive-async[postgres]``.

Usage::

    from proactive_async import AsyncClient, CampaignOptions, ProactiveConversationRequest
    from proactive_async.distributed import ChunkRunner, campaign_status, plan_campaign

    plan = await plan_campaign(
        "postgresql://app@db/campaigns?campaign=spring-sale",
        template=ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3),
        targets="recipients.csv",
        options=CampaignOptions(default_region="BR"),
    )
    for chunk in plan.pending_chunks:
        my_queue.put(("spring-sale", chunk))          # at least once is enough

    # In each worker process: one client, one runner, for the process's life.
    runner = ChunkRunner("postgresql://app@db/campaigns", client)
    try:
        await runner.run("spring-sale", chunk)        # every record of it ends final
    except ChunkBusyError:
        ...                                           # a live execution has it: retry later

    status = await campaign_status("postgresql://app@db/campaigns?campaign=spring-sale")
    if status.finished:
        with open("report.jsonl", "wb") as out:
            await write_report("postgresql://app@db/campaigns?campaign=spring-sale", out)
"""

from __future__ import annotations

from ._distributed import *  # noqa: F403  (its __all__ is this module's public surface)
from ._distributed import __all__ as __all__
