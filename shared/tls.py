"""One TLS context per process, shared by every httpx client the functions create.

httpx builds a new `ssl.SSLContext` (and reads the CA bundle) for each client
it constructs: ~19 ms of CPU. The orchestrator opens a client per pass, so a
shared context keeps a kicked pass cheap.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx


@cache
def context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
