"""The webhook admin routes: register, change, list and delete inbound webhooks."""

from __future__ import annotations

from shared import api, auth, webhooks
from shared.log import logger


def list_webhooks(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, webhooks.list_webhooks(caller, request.query))


def put_webhook(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    saved = webhooks.put(caller, request.path_param("webhookId"), request.json_object())
    logger.info("webhook saved", extra={"webhook_id": saved["webhook_id"],
                                        "new_secret": saved["secret"] is not None,
                                        "by": caller.actor})
    return api.Reply(200, saved, {"Cache-Control": "no-store"})


def delete_webhook(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    deleted = webhooks.delete(caller, request.path_param("webhookId"))
    logger.info("webhook deleted", extra={**deleted, "by": caller.actor})
    return api.Reply(200, deleted)


handler = api.handler_for_routes({
    "GET /webhooks": list_webhooks,
    "PUT /webhooks/{webhookId}": put_webhook,
    "DELETE /webhooks/{webhookId}": delete_webhook,
})
