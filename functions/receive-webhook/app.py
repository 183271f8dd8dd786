"""POST /webhooks/{webhookId}: another system's signed delivery starts the webhook's
workflow (no JWT: the signature, checked with the webhook's secret, is the credential)."""

from __future__ import annotations

from shared import api, webhooks
from shared.log import logger


def receive_webhook(request: api.Request) -> api.Reply:
    webhook_id = request.path_param("webhookId")
    started = webhooks.receive(webhook_id, request.headers, request.body())
    logger.info("webhook delivery started a job", extra={"webhook_id": webhook_id, **started})
    return api.Reply(202, started)


handler = api.handler_for(receive_webhook)
