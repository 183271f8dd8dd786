"""SSRF guard: real HTTP(S) servers on 127.0.0.1, refused unless explicitly allowlisted."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.executors import netguard
from shared.executors.base import StepError
from shared.settings import settings

type Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A threaded HTTP server that records the Host header of every request it gets."""

    httpd: ThreadingHTTPServer
    routes: dict[str, Route]
    hosts: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def start_server(
    routes: dict[str, Route], tls: ssl.SSLContext | None = None
) -> Iterator[Server]:
    server: Server

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.hosts.append(self.headers.get("Host", ""))
            route = server.routes.get(self.path)
            if route is None:
                self.send_error(404)
            else:
                route(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    server = Server(httpd, routes)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def ok(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "5")
    handler.end_headers()
    handler.wfile.write(b"hello")


def redirect(location: str) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


@pytest.fixture(autouse=True)
def no_env_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local stack's env allowlist must not leak into tests that expect refusals."""
    monkeypatch.delenv(netguard.ENV_ALLOWED_HOSTS, raising=False)


@pytest.fixture
def target() -> Iterator[Server]:
    """The server a refused request must never reach."""
    yield from start_server({"/ok": ok})


@pytest.fixture
def origin(target: Server) -> Iterator[Server]:
    yield from start_server(
        {
            "/ok": ok,
            "/hop": redirect("/ok"),
            "/loop": redirect("/loop"),
            "/to-target": redirect(target.url("/ok")),
            "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-file": redirect("file:///etc/passwd"),
        }
    )


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]
) -> list[str]:
    """Answer getaddrinfo for made-up names; returns the list of names looked up."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        out: list[Any] = []
        for address in answers[host]:
            out.extend(real(address, port, *args, **kwargs))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def get(url: str, allow: list[str] | None = None) -> httpx.Response:
    with netguard.guarded_client(5.0, allow or []) as client:
        response = netguard.send_checked(client, client.build_request("GET", url))
        response.read()
        response.close()
        return response


def refused(url: str, allow: list[str] | None = None) -> StepError:
    with pytest.raises(StepError) as info:
        get(url, allow)
    assert info.value.retryable is False
    return info.value


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.100.100.200", "non-global"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (an address to refuse, not to bind)
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", ""),  # reserved; some Python versions call it private
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),
        ("2002:a9fe:a9fe::", "link-local"),
        ("64:ff9b::a00:1", "private"),
    ],
)
def test_refusal_reason_names_non_public_addresses(address: str, reason: str) -> None:
    found = netguard.refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_refusal_reason_passes_public_addresses(address: str) -> None:
    assert netguard.refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("http://127.0.0.1:{port}/ok", "loopback"),
        ("http://localhost:{port}/ok", "loopback"),
        ("http://[::1]:{port}/ok", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/ok", "loopback"),
        ("http://2130706433:{port}/ok", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://10.20.30.40:{port}/ok", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://127.0.0.1:{port}/ok", "loopback"),
    ],
)
def test_refuses_local_targets(target: Server, template: str, why: str) -> None:
    url = template.format(port=target.port)
    error = refused(url)
    assert why in error.message
    assert httpx.URL(url).host in error.message
    assert target.hosts == []


def test_refuses_a_name_that_resolves_to_loopback(
    target: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"internal.example.test": ["127.0.0.1"]})
    error = refused(target.url("/ok", host="internal.example.test"))
    assert "internal.example.test" in error.message and "loopback" in error.message
    assert target.hosts == []


def test_refuses_when_any_resolved_address_is_private(
    target: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"mixed.example.test": ["8.8.8.8", "127.0.0.1"]})
    assert "loopback" in refused(target.url("/ok", host="mixed.example.test")).message
    assert target.hosts == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "/relative"])
def test_refuses_other_schemes(url: str) -> None:
    refused(url)


def test_allowlist_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(netguard.ENV_ALLOWED_HOSTS, " S3.local.test. ,, [::1]:9000 ")
    settings.cache_clear()  # the environment changed
    allow = netguard.allowed_hosts("a.test, B.test:8080")
    assert allow == {"a.test", "b.test:8080", "s3.local.test", "[::1]:9000"}
    assert netguard.is_allowlisted("S3.Local.Test", 443, allow)
    assert netguard.is_allowlisted("::1", 9000, allow)
    assert not netguard.is_allowlisted("::1", 9001, allow)
    assert not netguard.is_allowlisted("b.test", 80, allow)
    assert not netguard.is_allowlisted("x.a.test", 80, allow)


def test_allowlisted_host_and_port_works(target: Server) -> None:
    response = get(target.url("/ok"), allow=[f"127.0.0.1:{target.port}"])
    assert response.status_code == 200 and response.content == b"hello"
    assert target.hosts == [f"127.0.0.1:{target.port}"]


def test_allowlist_from_env(target: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(netguard.ENV_ALLOWED_HOSTS, f"example.test, localhost:{target.port}")
    settings.cache_clear()  # the environment changed
    assert get(target.url("/ok", host="localhost")).status_code == 200


def test_allowlist_by_bare_hostname(target: Server) -> None:
    assert get(target.url("/ok", host="LocalHost"), allow=["localhost"]).status_code == 200


def test_allowlist_entry_for_another_port_does_not_apply(target: Server) -> None:
    refused(target.url("/ok"), allow=[f"127.0.0.1:{target.port + 1}", "localhost"])
    assert target.hosts == []


def test_follows_redirects_within_the_allowlist(origin: Server) -> None:
    response = get(origin.url("/hop"), allow=[f"127.0.0.1:{origin.port}"])
    assert response.status_code == 200 and response.content == b"hello"
    assert len(origin.hosts) == 2


def test_redirect_to_a_refused_host_is_refused(origin: Server, target: Server) -> None:
    error = refused(origin.url("/to-target"), allow=[f"127.0.0.1:{origin.port}"])
    assert "loopback" in error.message
    assert len(origin.hosts) == 1
    assert target.hosts == []


@pytest.mark.parametrize(("path", "why"), [("/to-metadata", "link-local"), ("/to-file", "http")])
def test_redirect_to_metadata_or_file_is_refused(origin: Server, path: str, why: str) -> None:
    assert why in refused(origin.url(path), allow=[f"127.0.0.1:{origin.port}"]).message


def test_redirect_loop_stops_after_five_hops(origin: Server) -> None:
    error = refused(origin.url("/loop"), allow=[f"127.0.0.1:{origin.port}"])
    assert "too many redirects" in error.message
    assert len(origin.hosts) == netguard.MAX_REDIRECTS + 1


def test_redirects_are_not_followed_when_disabled(origin: Server) -> None:
    with netguard.guarded_client(5.0, [f"127.0.0.1:{origin.port}"]) as client:
        request = client.build_request("GET", origin.url("/to-target"))
        response = netguard.send_checked(client, request, follow_redirects=False)
        response.close()
    assert response.status_code == 302


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with pytest.raises(StepError) as info:
        get(f"http://127.0.0.1:{port}/", allow=[f"127.0.0.1:{port}"])
    assert info.value.retryable is True


def pretend_loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets a vetted name point at our local server, to observe where the guard connects."""
    real = netguard.refusal_reason
    monkeypatch.setattr(
        netguard,
        "refusal_reason",
        lambda ip: None if str(ip) == "127.0.0.1" else real(ip),
    )


def test_connects_to_the_vetted_address_not_a_second_lookup(
    target: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a second lookup would fail; the guard must not make one."""
    pretend_loopback_is_public(monkeypatch)
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.example.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        if len(lookups) > 1:
            raise socket.gaierror(socket.EAI_NONAME, "rebound")
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    response = get(target.url("/ok", host="rebind.example.test"))
    assert response.status_code == 200
    assert lookups == ["rebind.example.test"]
    assert target.hosts == [f"rebind.example.test:{target.port}"]


@pytest.fixture
def tls_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """An HTTPS server whose certificate names only `pinned.example.test`, trusted via env."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("pinned.example.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # httpx's default context reads it
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    yield from start_server({"/ok": ok}, tls=tls)


def test_https_to_a_pinned_address_verifies_the_hostname(
    tls_target: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard dials the IP but TLS must still check the certificate against the name."""
    pretend_loopback_is_public(monkeypatch)
    fake_dns(
        monkeypatch,
        {"pinned.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]},
    )
    response = get(tls_target.url("/ok", host="pinned.example.test", scheme="https"))
    assert response.status_code == 200 and response.content == b"hello"
    # Same address, a name the certificate does not cover: verification must fail.
    with pytest.raises(StepError) as info:
        get(tls_target.url("/ok", host="other.example.test", scheme="https"))
    assert "certificate" in info.value.message.lower()


def test_a_refusal_states_the_rule_not_the_address(
    target: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's error reaches the workflow's user: it must not map internal names."""
    fake_dns(monkeypatch, {"vm": ["127.0.0.1"]})
    error = refused(target.url("/ok", host="vm"))
    assert "'vm'" in error.message and "not a public address" in error.message
    assert "127.0.0.1" not in error.message
    assert target.hosts == []


@pytest.mark.parametrize("url", ["http://0177.0.0.1/x.wav", "http://[::1/x", "http://1.2.3.999/",
                                 "http://8.8.8.8:99999/x", "http://127.0.0.1:70000/"])
def test_a_url_httpx_cannot_use_is_a_permanent_failure(url: str) -> None:
    """It once raised httpx.InvalidURL, which the executor retried 4 times. A port out of
    range is refused before getaddrinfo wraps it around (99999 -> 34463)."""
    with netguard.guarded_client(5.0, ["127.0.0.1:70000"]) as client, pytest.raises(StepError) as info:
        netguard.send_checked(client, netguard.build_request(client, "GET", url))
    assert info.value.retryable is False and "unusable URL" in info.value.message
