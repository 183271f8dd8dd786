"""The environment the functions read; template.yaml sets the same names on Lambda."""

from __future__ import annotations

import os

from stack.config import StackConfig
from stack.postgres import database_url
from stack.secrets import StackSecrets


def uses_real_gemini() -> bool:
    """With GEMINI_API_KEY set when the stack starts, gemini-prompt talks to Google."""
    return bool(os.environ.get("GEMINI_API_KEY"))


def function_environment(cfg: StackConfig, sec: StackSecrets) -> dict[str, str]:
    gemini = (
        {"GEMINI_API_KEY": os.environ["GEMINI_API_KEY"]} if uses_real_gemini()
        else {"GEMINI_API_KEY": "local-fake-key", "GEMINI_BASE_URL": cfg.gemini_url}
    )
    return {
        **gemini,
        # Local only: the executors may reach this machine's own test servers.
        "SUPAFLOW_ALLOWED_HOSTS": f"{cfg.host},localhost",
        "SUPAFLOW_WEBHOOK_SECRET": sec.webhook_secret,
        "SUPABASE_URL": cfg.api_url,
        "SUPABASE_ANON_KEY": sec.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": sec.service_role_key,
        "SUPABASE_JWT_SECRET": sec.jwt_secret,
        "SUPAFLOW_INTERNAL_TOKEN": sec.internal_token,
        "SUPAFLOW_FUNCTIONS_URL": cfg.api_url,
        # Local only: timings reach GET /metrics within a second (deployed: 10 s).
        "SUPAFLOW_METRICS_FLUSH_S": "1",
        # The functions skip the gateway's /rest/v1 proxy, as a function next to the
        # database would; clients still use SUPABASE_URL.
        "SUPAFLOW_REST_URL": cfg.rest_url,
        "S3_ENDPOINT_URL": cfg.s3_url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "supaflow",
    }


def client_environment(cfg: StackConfig, sec: StackSecrets) -> dict[str, str]:
    """What `make env` prints: everything a client of the local stack needs."""
    return {
        "API_URL": cfg.api_url,
        "SUPABASE_URL": cfg.api_url,
        "SUPABASE_ANON_KEY": sec.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": sec.service_role_key,
        "SUPABASE_JWT_SECRET": sec.jwt_secret,
        "DATABASE_URL": database_url(cfg, sec),
        "S3_ENDPOINT_URL": cfg.s3_url,
        "SUPAFLOW_INTERNAL_TOKEN": sec.internal_token,
        "SUPAFLOW_WEBHOOK_SECRET": sec.webhook_secret,
        "GEMINI_BASE_URL": "" if uses_real_gemini() else cfg.gemini_url,
    }
