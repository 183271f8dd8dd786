"""GET /jobs: the caller's jobs, newest first, keyset-paginated."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from shared import api, auth, jobs


def routes(app: APIGatewayHttpResolver) -> None:
    @app.get("/jobs")
    def list_jobs() -> Response[str]:
        user = auth.verify_user(api.headers(app))
        query = dict(app.current_event.query_string_parameters or {})
        return api.json_response(200, jobs.list_jobs(user, query))


handler = api.handler_for(routes)
