"""The transformer routes (admins): list them, create or replace one."""

from __future__ import annotations

from shared import api, auth, transformers
from shared.log import logger


def list_transformers(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, transformers.list_transformers(caller, request.query))


def put_transformer(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    saved = transformers.put(caller, request.path_param("transformerId"), request.json_object())
    logger.info("transformer saved", extra={"transformer_id": saved["transformer_id"],
                                            "type": saved["type"], "by": caller.actor})
    return api.Reply(200, saved)


handler = api.handler_for_routes({
    "GET /transformers": list_transformers,
    "PUT /transformers/{transformerId}": put_transformer,
})
