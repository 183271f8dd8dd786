"""http-download: stream a URL into S3-compatible storage, behind the SSRF guard.

The body goes through a spooled temp file (memory up to 8 MiB, then disk), so a
large download never sits in memory; size and sha256 are computed on the fly and
the download stops as soon as it passes the size cap.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
import urllib.parse
from contextlib import closing
from typing import IO, Any, BinaryIO, cast

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from shared import storage
from shared.executors import netguard, parse_config
from shared.executors.base import StepContext, StepError
from shared.protocol import http_error_type
from supaflow_models.transformers import KEY_PLACEHOLDER, KEY_PLACEHOLDERS, HttpDownloadConfig

SPOOL_MAX_MEMORY = 8 * 1024 * 1024
CHUNK_BYTES = 64 * 1024

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def execute(config: dict[str, Any], inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    cfg = parse_config(HttpDownloadConfig, config)
    url = inputs.get("url")
    if not isinstance(url, str) or not url:
        raise StepError("input 'url' must be a non-empty string", retryable=False, error_type="input")
    bucket, max_bytes = cfg.bucket, cfg.max_bytes
    patterns = cfg.allowed_content_types or []
    netguard.check_url(url)
    key = render_key(
        cfg.key_template,
        {
            "job_id": ctx.job_id,
            "step_id": ctx.step_id,
            "attempt": str(ctx.attempt),
            "filename": filename_from_url(url),
        },
    )
    # Never outlive the lease: a later attempt would race this one.
    timeout_s = min(cfg.timeout_s, ctx.remaining_s())
    if timeout_s <= 0:
        raise StepError("no time left in the step's budget to download", retryable=True,
                        error_type="timeout")
    deadline = time.monotonic() + timeout_s

    with (
        netguard.guarded_client(timeout_s, cfg.allow_hosts or ()) as client,
        tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_MEMORY) as spool,
    ):
        # identity: a compressed body would be inflated in memory before the cap applies.
        request = netguard.build_request(client, "GET", url, headers={"Accept-Encoding": "identity"})
        with closing(netguard.send_checked(client, request)) as response:
            check_status(response)
            content_type = response.headers.get("Content-Type", "application/octet-stream").strip()
            if patterns and not content_type_allowed(content_type, patterns):
                raise StepError(
                    f"content type {content_type!r} of {url} is not one of {patterns}",
                    retryable=False,
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise StepError(
                    f"{url} is {declared} bytes, over the {max_bytes}-byte cap", retryable=False
                )
            size, sha256 = stream_to(response, spool, max_bytes, deadline)
        spool.seek(0)
        store(bucket, key, cast(BinaryIO, spool), content_type)

    return {
        "bucket": bucket,
        "key": key,
        "size": size,
        "content_type": content_type,
        "sha256": sha256,
        "source_url": url,
    }


def check_status(response: httpx.Response) -> None:
    """2xx passes; 429 and 5xx may heal on a later attempt; anything else will not."""
    status = response.status_code
    if 200 <= status < 300:
        return
    where = str(response.request.url)
    raise StepError(f"GET {where} answered {status}", retryable=status == 429 or status >= 500,
                    error_type=http_error_type(status))


def stream_to(
    response: httpx.Response, out: IO[bytes], max_bytes: int, deadline: float
) -> tuple[int, str]:
    """Copy the body to `out`, returning (size, sha256 hex); stops at the cap or deadline."""
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in response.iter_bytes(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise StepError(
                    f"{response.request.url} exceeds the {max_bytes}-byte cap", retryable=False
                )
            if time.monotonic() > deadline:
                # The read timeout only bounds each read; a trickling server needs this.
                raise StepError(f"download of {response.request.url} timed out", retryable=True,
                                error_type="timeout")
            digest.update(chunk)
            out.write(chunk)
    except httpx.DecodingError as exc:
        raise StepError(
            f"cannot decode body of {response.request.url}: {exc}", retryable=False
        ) from exc
    except httpx.TransportError as exc:
        raise StepError(
            f"download of {response.request.url} broke off: {exc!r}", retryable=True,
            error_type="network") from exc
    return size, digest.hexdigest()


def store(bucket: str, key: str, body: BinaryIO, content_type: str) -> None:
    """Upload; storage outages and throttling are retryable, refusals are not."""
    try:
        storage.ensure_bucket(bucket)
        storage.upload(bucket, key, body, content_type)
    except BotoCoreError as exc:
        raise StepError(f"storage unavailable: {exc}", retryable=True, error_type="network") from exc
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = str(exc.response.get("Error", {}).get("Code", ""))
        retryable = status >= 500 or status == 429 or code in {"SlowDown", "Throttling"}
        raise StepError(f"storage refused s3://{bucket}/{key}: {exc}", retryable=retryable,
                        error_type=http_error_type(status)) from exc


def content_type_allowed(content_type: str, patterns: list[str]) -> bool:
    """Match the media type (parameters ignored) against `type/subtype`, `type/*` or `*/*`."""
    media = content_type.split(";", 1)[0].strip().lower()
    major = media.split("/", 1)[0]
    for pattern in (p.strip().lower() for p in patterns):
        if pattern in ("*", "*/*", media):
            return True
        if pattern.endswith("/*") and pattern[:-2] == major:
            return True
    return False


def filename_from_url(url: str) -> str:
    """Last path segment, reduced to characters safe in any object key."""
    segment = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    name = _UNSAFE_FILENAME_CHARS.sub("_", segment).lstrip("._")[:128]
    return name or "download"


def render_key(template: str, values: dict[str, str]) -> str:
    """Substitute `{name}` placeholders; no format specs or attribute access, unlike str.format.
    `values` has one entry per KEY_PLACEHOLDERS name, the only names HttpDownloadConfig lets
    a template use."""
    assert values.keys() == KEY_PLACEHOLDERS
    key = KEY_PLACEHOLDER.sub(lambda match: values[match.group(1)], template).lstrip("/")
    if not key:
        raise StepError("key_template renders to an empty key", retryable=False, error_type="input")
    return key
