"""The functions' configuration, read once per process from the environment (the only
module that reads it).

template.yaml sets these on Lambda; the local stack sets the same names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


# Named here because the executors' error messages tell users to set it.
ALLOWED_HOSTS_ENV = "SUPAFLOW_ALLOWED_HOSTS"


@dataclass(frozen=True)
class Settings:
    supabase_url: str
    anon_key: str
    service_role_key: str
    jwt_secret: str
    internal_token: str
    functions_url: str
    max_body_bytes: int
    jwt_leeway_s: int
    # An executor's request carries a step's resolved inputs: the job's input and
    # earlier outputs (each up to 1 MiB), so it may exceed what a user may send.
    # 6 MiB is a synchronous Lambda invocation's own limit.
    max_internal_body_bytes: int = 6 * 1024 * 1024
    # An orchestrator pass: its time budget (capped by Lambda's remaining time), steps
    # in flight, steps per claim, how long it lingers idle, its pause after a wake-up
    # whose claim found nothing.
    orchestrator_budget_s: float = 60.0
    orchestrator_concurrency: int = 32
    orchestrator_batch: int = 16
    orchestrator_linger_s: float = 0.5
    orchestrator_poll_s: float = 0.005
    rest_url_override: str = ""
    # Executors: an S3-compatible endpoint other than AWS (moto, Supabase Storage),
    # the region, a Gemini endpoint other than Google's (the local fake), and hosts
    # an executor may reach although they resolve to private addresses (netguard).
    s3_endpoint_url: str = ""
    aws_region: str = "us-east-1"
    gemini_base_url: str = ""
    allowed_hosts: str = ""
    # How often a process sends the timings it measured (API requests, passes) to the
    # database; what it holds when it dies unflushed is lost (at most this long's).
    metrics_flush_s: float = 10.0
    # Whether the executors log each step's inputs and output (seed 002's optional
    # input/output logging). Off by default: they may hold personal data.
    log_step_data: bool = False

    @property
    def rest_url(self) -> str:
        """PostgREST: behind the project's API gateway, or reached directly when configured."""
        return self.rest_url_override or f"{self.supabase_url.rstrip('/')}/rest/v1"

    @property
    def jwks_url(self) -> str:
        return f"{self.supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json"


@cache
def settings() -> Settings:
    env = os.environ
    return Settings(
        supabase_url=env.get("SUPABASE_URL", ""),
        anon_key=env.get("SUPABASE_ANON_KEY", ""),
        service_role_key=env.get("SUPABASE_SERVICE_ROLE_KEY", ""),
        jwt_secret=env.get("SUPABASE_JWT_SECRET", ""),
        internal_token=env.get("SUPAFLOW_INTERNAL_TOKEN", ""),
        functions_url=env.get("SUPAFLOW_FUNCTIONS_URL", "").rstrip("/"),
        max_body_bytes=_int("SUPAFLOW_MAX_BODY_BYTES", 1024 * 1024),
        jwt_leeway_s=_int("SUPAFLOW_JWT_LEEWAY_S", 30),
        max_internal_body_bytes=_int("SUPAFLOW_MAX_INTERNAL_BODY_BYTES", 6 * 1024 * 1024),
        orchestrator_budget_s=_float("SUPAFLOW_ORCHESTRATOR_BUDGET_S", 60.0),
        orchestrator_concurrency=_int("SUPAFLOW_ORCHESTRATOR_CONCURRENCY", 32),
        orchestrator_batch=_int("SUPAFLOW_ORCHESTRATOR_BATCH", 16),
        orchestrator_linger_s=_float("SUPAFLOW_ORCHESTRATOR_LINGER_S", 0.5),
        orchestrator_poll_s=_float("SUPAFLOW_ORCHESTRATOR_POLL_S", 0.005),
        rest_url_override=env.get("SUPAFLOW_REST_URL", "").rstrip("/"),
        s3_endpoint_url=env.get("S3_ENDPOINT_URL", ""),
        aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        gemini_base_url=env.get("GEMINI_BASE_URL", ""),
        allowed_hosts=env.get(ALLOWED_HOSTS_ENV, ""),
        metrics_flush_s=_float("SUPAFLOW_METRICS_FLUSH_S", 10.0),
        log_step_data=env.get("SUPAFLOW_LOG_STEP_DATA", "").lower() in ("1", "true", "yes"),
    )


def named_secret(name: str) -> str:
    """A secret whose environment variable a transformer's config names (a webhook's
    HMAC secret, a Gemini key): the config holds the name, never the value. Read on
    each use, not cached, as the name comes from data."""
    return os.environ.get(name, "")
