"""http-download against a real HTTP server on 127.0.0.1 and moto's real S3 server."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from shared import storage
from shared.executors import http_download, netguard
from shared.executors.base import StepContext, StepError
from shared.settings import settings

type Route = Callable[[BaseHTTPRequestHandler], None]

BODY = os.urandom(3 * 1024 * 1024 + 123)  # spans many chunks, not a multiple of any


@dataclass
class Server:
    httpd: ThreadingHTTPServer
    routes: dict[str, Route]
    paths: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def allow(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def serve(routes: dict[str, Route]) -> Iterator[Server]:
    server: Server

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.paths.append(self.path)
            route = server.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            try:
                route(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on purpose (size cap)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server = Server(httpd, routes)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def respond(
    status: int, body: bytes = b"", content_type: str = "application/octet-stream",
    length: int | None = -1, headers: dict[str, str] | None = None,
) -> Route:
    """A fixed answer; length None omits Content-Length (the body ends at connection close)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        if length is not None:
            handler.send_header("Content-Length", str(len(body) if length == -1 else length))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        for start in range(0, len(body), 65536):
            handler.wfile.write(body[start : start + 65536])

    return route


def endless(handler: BaseHTTPRequestHandler) -> None:
    """A body with no length and no end: only a client-side cap stops it."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.end_headers()
    chunk = b"\0" * 65536
    for _ in range(16384):  # 1 GiB, a backstop so a broken client cannot hang the suite
        handler.wfile.write(chunk)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A boto3 client on moto; shared.storage is pointed at the same server."""
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    storage.client.cache_clear()
    yield boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    storage.client.cache_clear()


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, existing, empty bucket, so 'nothing uploaded' is checkable."""
    name = f"dl-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True)
def no_env_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(netguard.ENV_ALLOWED_HOSTS, raising=False)


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(
        {
            "/media/talk%20one.mp3?x=1": respond(200, BODY, "audio/mpeg"),
            "/media/stream.bin": respond(200, BODY, "audio/mpeg", length=None),
            "/media/endless": endless,
            "/media/huge-declared": respond(200, b"x" * 100, length=50 * 1024 * 1024),
            "/page.html": respond(200, b"<html></html>", "text/html; charset=utf-8"),
            "/unavailable": respond(503, b"busy"),
            "/throttled": respond(429, b"slow down"),
            "/forbidden": respond(403, b"no"),
            "/moved": respond(302, headers={"Location": "/media/stream.bin"}),
        }
    ) as server:
        yield server


@pytest.fixture
def elsewhere() -> Iterator[Server]:
    """A second local server that is never allowlisted."""
    with serve({"/secret": respond(200, b"internal", "text/plain")}) as server:
        yield server


def ctx() -> StepContext:
    return StepContext("job-1", "step-1", 2, "http-download", 60.0)


def objects(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def download(
    url: str, bucket: str, allow: list[str] | None = None, **config: Any
) -> dict[str, Any]:
    return http_download.execute(
        {"bucket": bucket, "allow_hosts": allow or [], **config}, {"url": url}, ctx()
    )


def failure(url: str, bucket: str, allow: list[str] | None = None, **config: Any) -> StepError:
    with pytest.raises(StepError) as info:
        download(url, bucket, allow, **config)
    return info.value


def test_download_lands_in_s3_with_size_and_sha256(web: Server, s3: Any) -> None:
    bucket = f"fresh-{uuid.uuid4().hex[:12]}"  # created by the executor
    url = web.url("/media/talk%20one.mp3?x=1")
    out = download(url, bucket, web.allow, allowed_content_types=["audio/*"])
    assert out == {
        "bucket": bucket,
        "key": "job-1/step-1/talk_one.mp3",
        "size": len(BODY),
        "content_type": "audio/mpeg",
        "sha256": hashlib.sha256(BODY).hexdigest(),
        "source_url": url,
    }
    stored = s3.get_object(Bucket=bucket, Key=out["key"])
    assert stored["Body"].read() == BODY
    assert stored["ContentType"] == "audio/mpeg"


def test_streamed_body_without_length_and_custom_key(web: Server, s3: Any, bucket: str) -> None:
    out = download(
        web.url("/media/stream.bin"), bucket, web.allow,
        key_template="audio/{job_id}-{attempt}/{filename}",
    )
    assert out["key"] == "audio/job-1-2/stream.bin"
    assert out["size"] == len(BODY)
    assert s3.get_object(Bucket=bucket, Key=out["key"])["Body"].read() == BODY


def test_allowlist_from_env(
    web: Server, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(netguard.ENV_ALLOWED_HOSTS, f"localhost:{web.port}")
    settings.cache_clear()  # the environment changed
    out = download(web.url("/media/stream.bin", host="localhost"), bucket)
    assert out["sha256"] == hashlib.sha256(BODY).hexdigest()


def test_follows_a_redirect_on_an_allowed_host(web: Server, s3: Any, bucket: str) -> None:
    out = download(web.url("/moved"), bucket, web.allow)
    assert out["size"] == len(BODY) and out["key"] == "job-1/step-1/moved"
    assert web.paths == ["/moved", "/media/stream.bin"]


def test_oversized_by_content_length_fails_permanently(
    web: Server, s3: Any, bucket: str
) -> None:
    error = failure(web.url("/media/huge-declared"), bucket, web.allow, max_bytes=1024 * 1024)
    assert error.retryable is False and "cap" in error.message
    assert objects(s3, bucket) == []


def test_oversized_stream_fails_permanently(web: Server, s3: Any, bucket: str) -> None:
    error = failure(web.url("/media/stream.bin"), bucket, web.allow, max_bytes=1024 * 1024)
    assert error.retryable is False and "cap" in error.message
    assert objects(s3, bucket) == []


def test_endless_stream_stops_at_the_cap(web: Server, s3: Any, bucket: str) -> None:
    error = failure(web.url("/media/endless"), bucket, web.allow, max_bytes=2 * 1024 * 1024)
    assert error.retryable is False and "cap" in error.message
    assert objects(s3, bucket) == []


def test_body_exactly_at_the_cap_is_accepted(web: Server, s3: Any, bucket: str) -> None:
    assert download(web.url("/media/stream.bin"), bucket, web.allow, max_bytes=len(BODY))[
        "size"
    ] == len(BODY)


def test_wrong_content_type_fails_permanently(web: Server, s3: Any, bucket: str) -> None:
    error = failure(
        web.url("/page.html"), bucket, web.allow,
        allowed_content_types=["audio/*", "application/pdf"],
    )
    assert error.retryable is False and "text/html" in error.message
    assert objects(s3, bucket) == []


@pytest.mark.parametrize(
    ("path", "retryable"),
    [("/unavailable", True), ("/throttled", True), ("/forbidden", False), ("/nothing", False)],
)
def test_http_errors(web: Server, s3: Any, bucket: str, path: str, retryable: bool) -> None:
    error = failure(web.url(path), bucket, web.allow)
    assert error.retryable is retryable
    assert objects(s3, bucket) == []


def test_connection_refused_is_retryable(s3: Any, bucket: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    error = failure(f"http://127.0.0.1:{port}/x", bucket, [f"127.0.0.1:{port}"])
    assert error.retryable is True


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/secret",
        "http://localhost:{port}/secret",
        "http://[::1]:{port}/secret",
        "http://10.0.0.8/secret",
        "http://169.254.169.254/latest/meta-data/iam/",
    ],
)
def test_refuses_local_targets_without_allowlist(
    elsewhere: Server, s3: Any, bucket: str, template: str
) -> None:
    error = failure(template.format(port=elsewhere.port), bucket)
    assert error.retryable is False and "refused" in error.message
    assert elsewhere.paths == []
    assert objects(s3, bucket) == []


def test_refuses_a_name_resolving_to_loopback(
    elsewhere: Server, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "files.example.test":
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    error = failure(elsewhere.url("/secret", host="files.example.test"), bucket)
    assert error.retryable is False and "files.example.test" in error.message
    assert elsewhere.paths == []


def test_redirect_from_allowed_to_refused_host(
    elsewhere: Server, s3: Any, bucket: str
) -> None:
    with serve({"/go": respond(302, headers={"Location": elsewhere.url("/secret")})}) as origin:
        error = failure(origin.url("/go"), bucket, origin.allow)
    assert error.retryable is False and "loopback" in error.message
    assert origin.paths == ["/go"]
    assert elsewhere.paths == []
    assert objects(s3, bucket) == []


def test_bad_config_is_permanent(web: Server, s3: Any, bucket: str) -> None:
    error = failure(web.url("/media/stream.bin"), bucket, web.allow, key_template="{nope}/x")
    assert error.retryable is False and "{nope}" in error.message
    with pytest.raises(StepError) as info:
        http_download.execute({"bucket": bucket}, {}, ctx())
    assert info.value.retryable is False
    assert web.paths == []


@pytest.mark.parametrize(
    ("content_type", "patterns", "allowed"),
    [
        ("audio/mpeg", ["audio/*"], True),
        ("Audio/MPEG; foo=bar", ["audio/mpeg"], True),
        ("application/pdf", ["audio/*", "application/pdf"], True),
        ("text/html", ["audio/*", "application/pdf"], False),
        ("audiox/mpeg", ["audio/*"], False),
        ("anything/else", ["*/*"], True),
    ],
)
def test_content_type_patterns(content_type: str, patterns: list[str], allowed: bool) -> None:
    assert http_download.content_type_allowed(content_type, patterns) is allowed


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://x.test/a/b/episode%2001.mp3?sig=1", "episode_01.mp3"),
        ("https://x.test/", "download"),
        ("https://x.test/..%2F..%2Fetc%2Fpasswd", "etc_passwd"),
        ("https://x.test/.hidden", "hidden"),
    ],
)
def test_filename_from_url(url: str, name: str) -> None:
    assert http_download.filename_from_url(url) == name


@pytest.mark.parametrize("url", ["http://[::1/x.wav", "http://[zz]/x.wav", "http://0177.0.0.1/x.wav",
                                 "http://example.test:0/x.wav", "http://\uff21\u2100b/x.wav"])
def test_a_url_that_cannot_be_parsed_fails_the_step_for_good(url: str) -> None:
    """urlsplit (for the file name) raised ValueError before netguard saw the URL, and
    the runtime retried that as a crash."""
    with pytest.raises(StepError) as info:
        http_download.execute({"bucket": "b"}, {"url": url}, ctx())
    assert info.value.retryable is False and "unusable URL" in info.value.message
