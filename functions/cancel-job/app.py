"""POST /jobs/{jobId}/cancel: the owner cancels a job; its unfinished steps never run."""

from __future__ import annotations

from shared import api, auth, jobs
from shared.log import logger


def cancel_job(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    result = jobs.cancel(caller, request.path_param("jobId"))
    if result["cancelled"]:
        logger.info("job cancelled", extra={"job_id": result["job_id"], "by": caller.actor})
    return api.Reply(200, result)


handler = api.handler_for(cancel_job)
