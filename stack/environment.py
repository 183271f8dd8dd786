"""The environment the functions read; template.yaml sets the same names on Lambda."""

from __future__ import annotations

from stack.config import StackConfig
from stack.postgres import database_url
from stack.secrets import StackSecrets


def function_environment(cfg: StackConfig, sec: StackSecrets) -> dict[str, str]:
    return {
        "SUPABASE_URL": cfg.api_url,
        "SUPABASE_ANON_KEY": sec.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": sec.service_role_key,
        "SUPABASE_JWT_SECRET": sec.jwt_secret,
        "SUPAFLOW_INTERNAL_TOKEN": sec.internal_token,
        "SUPAFLOW_FUNCTIONS_URL": cfg.api_url,
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
    }
