"""Managing transformers (admins): each one's config is validated by the model of the
executor that will run it (shared.executors), so a bad config is a 400 here, not a
failed step later. Who may do what is decided in SQL (put_transformer, list_transformers)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared import db
from shared.api import first_problem
from shared.auth import Caller
from shared.errors import ApiError, bad_request
from supaflow_models.requests import TransformerRequest
from supaflow_models.transformers import TRANSFORMER_TYPES, ConfigError, validate_config


def put(caller: Caller, transformer_id: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        req = TransformerRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    try:
        config = validate_config(req.type, req.config)
    except ConfigError as exc:
        raise ApiError(400, "invalid_config", "; ".join(exc.problems)) from exc
    return db.obj(db.rpc("put_transformer", {
        "p_transformer_id": transformer_id, "p_type": req.type, "p_description": req.description,
        "p_config": config, "p_target_function": TRANSFORMER_TYPES[req.type].function,
        "p_tenant_id": req.tenant_id, "p_claims": caller.claims,
    }))


def list_transformers(caller: Caller, query: dict[str, str]) -> dict[str, Any]:
    if query:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(query))}")
    return {"transformers": db.rows(db.rpc("list_transformers", {"p_claims": caller.claims}))}
