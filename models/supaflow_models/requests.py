"""The bodies of the admin API's PUTs, which the `supaflow` command's files hold too (with
`kind` and `id`). What the database bounds (ids, a description's length, tenant ids) it
alone checks; what a definition or a config may be, their own models check."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class DraftRequest(BaseModel):
    """PUT /workflows/{workflowId}: a draft's description and definition."""

    model_config = ConfigDict(extra="forbid", strict=True)

    description: str | None = None
    definition: dict[str, Any]
    tenant_id: str | None = None


class TransformerRequest(BaseModel):
    """PUT /transformers/{transformerId}; the executor function follows from the type."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    description: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    tenant_id: str | None = None


class TriggerRequest(BaseModel):
    """PUT /triggers/{triggerId}: start `workflow_id` on each change of `table` (schema.table)
    that `events` name and `condition` (a SQL expression on OLD/NEW) admits; the input maps
    keys to `new.<column>` / `old.<column>` (default: the whole change), the job runs for
    the user in `owner_column` (default: nobody)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: str
    table: str
    events: list[str] = Field(min_length=1)
    condition: str | None = Field(default=None, max_length=2000)
    input_mapping: dict[str, str] | None = None
    owner_column: str | None = None
    # Seed 001's phase: start at this column's time plus start_offset_s (negative: before).
    start_at_column: str | None = None
    start_offset_s: float = Field(default=0, ge=-2592000, le=2592000)  # 30 days


class ScheduleRequest(BaseModel):
    """PUT /schedules/{scheduleId}: start `workflow_id` with `input` on a cron expression
    (pg_cron's five fields, read in `timezone`, an IANA name), for `owner` (a user id) or
    nobody; `overlap`: what a run does while the previous one is still going (`skip` or
    `allow`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: str
    cron: str = Field(max_length=100)
    timezone: str = "UTC"
    input: dict[str, Any] = Field(default_factory=dict)
    owner: str | None = None
    enabled: bool = True
    overlap: str = "skip"


class WebhookRequest(BaseModel):
    """PUT /webhooks/{webhookId}: start `workflow_id` on each signed delivery to
    POST /webhooks/{webhookId}. `signature`: how the sender signs (`standard`: Standard
    Webhooks' webhook-id/-timestamp/-signature, as Supabase and Svix send; `github`;
    `stripe`). `secret`: bring your own (Stripe's endpoint secret); otherwise one is
    generated, and `rotate_secret` generates a new one. The input is
    {"body", "headers" (those listed), "delivery_id", "webhook_id"}, or `input_mapping`
    applied to it (`$.input.body.action`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: str
    signature: Literal["standard", "github", "stripe"] = "standard"
    secret: str | None = Field(default=None, min_length=16, max_length=200)
    rotate_secret: bool = False
    tolerance_s: int = Field(default=300, ge=1, le=3600)
    headers: list[Annotated[str, StringConstraints(
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")]] = Field(default_factory=list,
                                                                max_length=20)
    input_mapping: dict[str, Any] | None = None
    owner: str | None = None
    status: Literal["active", "paused"] = "active"
