"""GET /jobs/{jobId}: one of the caller's jobs with a summary of its steps."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from shared import api, auth, jobs


def routes(app: APIGatewayHttpResolver) -> None:
    @app.get("/jobs/<jobId>")
    def get_job(jobId: str) -> Response[str]:
        user = auth.verify_user(api.headers(app))
        return api.json_response(200, jobs.get(user, jobId))


handler = api.handler_for(routes)
