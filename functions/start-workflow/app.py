"""POST /workflows/start: validate the input, create the job, kick the orchestrator."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from shared import api, auth, jobs
from shared.dispatch import kick_orchestrator


def routes(app: APIGatewayHttpResolver) -> None:
    @app.post("/workflows/start")
    def start_workflow() -> Response[str]:
        user = auth.verify_user(api.headers(app))
        status, body = jobs.start(user, api.json_object(app))
        if status == 202:
            api.logger.info("job started", extra={"job_id": body["job_id"], "user_id": user.id})
            kick_orchestrator("job started", app.current_event.raw_event)
        return api.json_response(status, body)


handler = api.handler_for(routes)
