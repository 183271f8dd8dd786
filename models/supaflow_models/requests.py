"""The bodies of the admin API's PUTs, which the `supaflow` command's files hold too (with
`kind` and `id`). What the database bounds (ids, a description's length, tenant ids) it
alone checks; what a definition or a config may be, their own models check."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    condition: str | None = None
    input_mapping: dict[str, str] | None = None
    owner_column: str | None = None
    # Seed 001's phase: start at this column's time plus start_offset_s (negative: before).
    start_at_column: str | None = None
    start_offset_s: float = 0


class ScheduleRequest(BaseModel):
    """PUT /schedules/{scheduleId}: start `workflow_id` with `input` on a cron expression
    (pg_cron's five fields, in `timezone`), for `owner` (a user id) or nobody; `overlap`:
    what a run does while the previous one is still going (`skip` or `allow`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: str
    cron: str
    timezone: str = "UTC"
    input: dict[str, Any] = Field(default_factory=dict)
    owner: str | None = None
    enabled: bool = True
    overlap: str = "skip"
