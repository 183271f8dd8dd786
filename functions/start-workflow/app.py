"""POST /workflows/start: validate the input, create the job, kick the orchestrator."""

from __future__ import annotations

from shared import api, auth, start
from shared.dispatch import KICK_REASON, kick_orchestrator
from shared.log import logger


def start_workflow(request: api.Request) -> api.Reply:
    user = auth.verify_user(request.headers)
    status, body = start.start_job(user, request.json_object())
    kick = bool(body.pop("kick", False))  # no orchestrator pass is alive to find the job
    if status == 202:
        logger.info("job started", extra={"job_id": body["job_id"], "user_id": user.id, "kick": kick})
    if kick:
        kick_orchestrator(KICK_REASON, request.raw_event)
    return api.Reply(status, body)


handler = api.handler_for(start_workflow)
