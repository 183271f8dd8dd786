"""The workflow management routes: anyone signed in lists and reads the workflows they
may start; admins PUT drafts, publish them as versions and deactivate workflows."""

from __future__ import annotations

from shared import api, auth, workflows
from shared.log import logger


def list_workflows(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, workflows.list_workflows(caller, request.query))


def get_workflow(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    found = workflows.get_workflow(caller, request.path_param("workflowId"))
    etag = {"ETag": f'"{found["version"]}"'} if found.get("version") is not None else {}
    return api.Reply(200, found, etag)


def put_workflow(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    draft = workflows.put_draft(caller, request.path_param("workflowId"), request.json_object())
    logger.info("workflow draft saved", extra={"workflow_id": draft["workflow_id"],
                                               "by": caller.actor})
    return api.Reply(200, draft)


def publish_workflow(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    published = workflows.publish(caller, request.path_param("workflowId"), request)
    logger.info("workflow published", extra={**published, "by": caller.actor})
    return api.Reply(200, published, {"ETag": f'"{published["version"]}"'})


def delete_workflow(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    result = workflows.deactivate(caller, request.path_param("workflowId"))
    logger.info("workflow deactivated", extra={**result, "by": caller.actor})
    return api.Reply(200, result)


handler = api.handler_for_routes({
    "GET /workflows": list_workflows,
    "GET /workflows/{workflowId}": get_workflow,
    "PUT /workflows/{workflowId}": put_workflow,
    "POST /workflows/{workflowId}/publish": publish_workflow,
    "DELETE /workflows/{workflowId}": delete_workflow,
})
