"""POST /jobs/{jobId}/retry: a failed or cancelled job runs again from its unfinished
steps (its owner or its tenant's admins); the orchestrator is kicked to find them."""

from __future__ import annotations

from shared import api, auth, jobs
from shared.dispatch import KICK_REASON, kick_orchestrator
from shared.log import logger


def retry_job(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    result = jobs.retry(caller, request.path_param("jobId"))
    kick = bool(result.pop("kick", False))
    logger.info("job retried", extra={"job_id": result["job_id"], "by": caller.actor,
                                      "steps": result["retried_steps"], "kick": kick})
    if kick:
        kick_orchestrator(KICK_REASON, request.raw_event)
    return api.Reply(202, result)


handler = api.handler_for(retry_job)
