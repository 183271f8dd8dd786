"""POST /workflows/start: validate the input, create the job (or a batch of jobs, with
{"jobs": [...]}), and kick the orchestrator when no pass is alive to find them."""

from __future__ import annotations

from shared import api, auth, start
from shared.dispatch import KICK_REASON, kick_orchestrator
from shared.log import logger


def start_workflow(request: api.Request) -> api.Reply:
    user = auth.verify_user(request.headers)
    body = request.json_object()
    if "jobs" in body:
        reply, kick = start.start_jobs(user, body)
        status = 200
        logger.info("jobs started", extra={"user_id": user.id, "kick": kick, "jobs_created": sum(
            r["outcome"] == "created" for r in reply["results"])})
    else:
        status, reply = start.start_job(user, body)
        kick = bool(reply.pop("kick", False))  # no orchestrator pass is alive to find the job
        if status == 202:
            logger.info("job started", extra={"job_id": reply["job_id"], "user_id": user.id,
                                              "kick": kick})
    if kick:
        kick_orchestrator(KICK_REASON, request.raw_event)
    return api.Reply(status, reply)


handler = api.handler_for(start_workflow)
