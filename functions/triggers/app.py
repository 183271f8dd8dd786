"""The trigger routes (the service role): attach a workflow to a table's row changes,
detach it, list them with the SQL they installed."""

from __future__ import annotations

from shared import api, auth, triggers
from shared.log import logger


def list_triggers(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, triggers.list_triggers(caller, request.query))


def put_trigger(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    attached = triggers.attach(caller, request.path_param("triggerId"), request.json_object())
    logger.info("trigger attached", extra={"trigger_id": attached["trigger_id"],
                                           "table": attached["table_name"], "by": caller.actor})
    return api.Reply(200, attached)


def delete_trigger(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    detached = triggers.detach(caller, request.path_param("triggerId"))
    logger.info("trigger detached", extra={**detached, "by": caller.actor})
    return api.Reply(200, detached)


handler = api.handler_for_routes({
    "GET /triggers": list_triggers,
    "PUT /triggers/{triggerId}": put_trigger,
    "DELETE /triggers/{triggerId}": delete_trigger,
})
