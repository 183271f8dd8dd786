"""SSRF protection for executors that fetch or POST to user-supplied URLs.

Workflow authors choose the URLs that http-download and webhook-call reach, and
the functions run inside the provider's network, next to metadata services and
private endpoints. So every outgoing request (and every redirect hop) goes
through `GuardedTransport`, which:

1. accepts only http and https;
2. resolves the host once with `socket.getaddrinfo` and refuses it if ANY of
   its addresses is not a public unicast address (loopback, private,
   link-local including 169.254.169.254, multicast, reserved, unspecified, and
   the IPv4-mapped / 6to4 / NAT64 spellings of those);
3. connects to the address it vetted, not to the name, so a DNS answer that
   changes between check and connect (DNS rebinding) cannot redirect the
   connection. The Host header and the TLS server name stay the original host.

Hosts named in an explicit allowlist (config `allow_hosts` plus the
comma-separated env var SUPAFLOW_ALLOWED_HOSTS, which the local stack and the
tests set) skip the address check; an entry is an exact hostname
(`minio.internal`) or `host:port` (`127.0.0.1:8080`, `[::1]:8080`).
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Collection
from typing import Any

import httpx

from shared.executors.base import StepError
from shared.log import logger
from shared.settings import ALLOWED_HOSTS_ENV, settings

ENV_ALLOWED_HOSTS = ALLOWED_HOSTS_ENV
REFUSED_RULE = ("it is not a public address (private, loopback, link-local, multicast and "
                "reserved addresses are refused)")
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}

# Headers that must not follow a redirect to another host.
_CREDENTIAL_HEADERS = frozenset({"host", "authorization", "proxy-authorization", "cookie"})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

type IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be contacted, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address that carries an IPv4 one reaches that IPv4 address.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = refusal_reason(embedded)
            if inner is not None:
                return f"{inner} (embedded in {ip})"
        if ip.is_site_local:
            return "site-local"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata lives here)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        # e.g. 100.64.0.0/10 (carrier-grade NAT; Alibaba's metadata is 100.100.100.200).
        return "non-global"
    return None


def allowed_hosts(extra: Collection[str] = ()) -> frozenset[str]:
    """Normalised allowlist: `extra` (from config) plus SUPAFLOW_ALLOWED_HOSTS."""
    if isinstance(extra, str):  # a lone string is one comma-separated list, not characters
        extra = extra.split(",")
    entries = [*extra, *settings().allowed_hosts.split(",")]
    return frozenset(str(e).strip().lower().rstrip(".") for e in entries if str(e).strip())


def is_allowlisted(host: str, port: int, allow: Collection[str]) -> bool:
    """Exact hostname or exact `host:port` match; IPv6 literals may be bracketed."""
    host = host.lower().rstrip(".")
    named = f"[{host}]" if ":" in host else host
    return host in allow or named in allow or f"{named}:{port}" in allow


def vet_host(host: str, port: int) -> str:
    """Resolve `host` and return one address to connect to, refusing if any is non-public.

    All addresses are checked, not just the one used, because a client library
    or a retry could pick any of them.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        # EAI_AGAIN is a temporary resolver failure; "no such name" will not fix itself.
        raise StepError(
            f"cannot resolve host {host!r}: {exc}", retryable=exc.errno == socket.EAI_AGAIN,
            error_type="network") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise StepError(f"host {host!r} resolves to no address", retryable=False,
                        error_type="network")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope id
        reason = refusal_reason(ip)
        if reason is not None:
            # The step's error reaches the workflow's user: it states the rule, never
            # what an internal name resolves to. The log keeps the address.
            logger.warning("SSRF guard refused a host",
                           extra={"host": host, "address": str(ip), "reason": reason})
            raise StepError(
                f"refused host {host!r}: {REFUSED_RULE}; "
                f"list it in allow_hosts or {ENV_ALLOWED_HOSTS} to permit it",
                retryable=False, error_type="input")
    return addresses[0]


class GuardedTransport(httpx.BaseTransport):
    """Checks every request it sends and pins the connection to the vetted address."""

    def __init__(self, allow_hosts: Collection[str] = ()) -> None:
        self._allow = allowed_hosts(allow_hosts)
        # No keep-alive: pooled connections are keyed by IP, and a TLS connection
        # verified for one hostname must never carry a request for another.
        self._inner = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in DEFAULT_PORTS:
            raise StepError(
                f"refused URL {str(url)!r}: only http and https are allowed", retryable=False,
                error_type="input")
        host = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS sees it
        if not host:
            raise StepError(f"refused URL {str(url)!r}: it has no host", retryable=False, error_type="input")
        port = DEFAULT_PORTS[url.scheme] if url.port is None else url.port
        if not 0 < port < 65536:  # getaddrinfo would silently wrap it (99999 -> 34463)
            raise StepError(f"unusable URL {str(url)!r}: port {port} is out of range", retryable=False,
                            error_type="input")
        if is_allowlisted(host, port, self._allow):
            return self._inner.handle_request(request)

        address = vet_host(host, port)
        extensions = dict(request.extensions)
        if url.scheme == "https":
            # Certificate checked against the hostname, not the IP we dial.
            extensions["sni_hostname"] = host
        # The request keeps its Host header (set when it was built from the
        # original URL); only the address httpcore dials changes.
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=address),
            headers=request.headers,
            stream=request.stream,
            extensions=extensions,
        )
        return self._inner.handle_request(pinned)

    def close(self) -> None:
        self._inner.close()


def guarded_client(timeout: float, allow_hosts: Collection[str] = ()) -> httpx.Client:
    """An httpx client whose every request passes the SSRF guard.

    It never follows redirects by itself (use `send_checked`) and ignores proxy
    and netrc settings from the environment, which could bypass the guard or
    leak credentials.
    """
    return httpx.Client(
        transport=GuardedTransport(allow_hosts),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


def check_url(url: str) -> None:
    """Refuse, for good, a URL that httpx or urllib cannot even parse (`http://[::1/`,
    `http://0177.0.0.1/`): a retry would fail the same way."""
    try:
        parsed = httpx.URL(url)
        urllib.parse.urlsplit(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise StepError(f"unusable URL {url!r}: {exc}", retryable=False, error_type="input") from exc
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise StepError(f"unusable URL {url!r}: port {parsed.port} is out of range", retryable=False,
                        error_type="input")


def build_request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Request:
    """client.build_request, where a URL httpx cannot use (`http://0177.0.0.1/`, a bad
    port) is the workflow's mistake: a permanent step failure, not a retried crash."""
    check_url(url)
    return client.build_request(method, url, **kwargs)


def send_checked(
    client: httpx.Client,
    request: httpx.Request,
    *,
    follow_redirects: bool = True,
    max_redirects: int = MAX_REDIRECTS,
) -> httpx.Response:
    """Send `request` streaming, following GET/HEAD redirects hop by hop.

    Each hop is a new request through the guarded transport, so every Location
    is resolved and checked again. Network failures become retryable
    StepErrors; the caller owns (and must close) the returned response.
    """
    start = request.url
    hops = 0
    while True:
        try:
            response = client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise StepError(f"timed out contacting {request.url}: {exc!r}", retryable=True,
                            error_type="timeout") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise StepError(f"unusable URL {request.url}: {exc}", retryable=False,
                            error_type="input") from exc
        except httpx.TransportError as exc:
            raise StepError(f"cannot reach {request.url}: {exc!r}", retryable=True,
                            error_type="network") from exc
        if (
            not follow_redirects
            or not response.has_redirect_location
            or request.method not in ("GET", "HEAD")
        ):
            return response
        response.close()
        if hops == max_redirects:
            raise StepError(
                f"too many redirects (more than {max_redirects}) starting at {start}",
                retryable=False, error_type="input")
        hops += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
        try:
            target = request.url.join(response.headers["Location"])
            request = client.build_request(request.method, target, headers=headers)
        except httpx.InvalidURL as exc:
            raise StepError(f"invalid redirect from {request.url}: {exc}", retryable=False,
                            error_type="input") from exc
