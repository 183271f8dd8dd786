"""One HTTP front door mirroring Supabase's layout, plus the functions of template.yaml.

- /rest/v1/*                        -> PostgREST (supabase-py appends /rest/v1 itself)
- /auth/v1/.well-known/jwks.json    -> the local ES256 public key
- every HttpApi route of template.yaml -> its handler, called with an API Gateway v2 event

Handlers run in worker threads and are shielded from client disconnects, as a
Lambda invocation keeps running when its caller goes away. The gateway runs
SUPAFLOW_GATEWAY_WORKERS processes (default 2): the functions are separate
processes on Lambda, and one process's GIL capped the local stack at ~0.9 cores.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import importlib.util
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import httpx
import jwt
import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute

from stack import postgres, template
from stack.config import REPO, StackConfig
from stack.environment import function_environment
from stack.secrets import load

log = logging.getLogger("gateway")

API_GATEWAY_MAX_BODY = 10 * 1024 * 1024
PR_SET_PDEATHSIG = 1  # linux/prctl.h
HOP_BY_HOP = {
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-authenticate", "host", "content-length",
    "content-encoding", "accept-encoding",
}


class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, route: template.Route) -> None:
        self.function_name = route.function
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = route.memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.invoked_function_arn = (
            f"arn:aws:lambda:local:000000000000:function:{route.function}"
        )
        self.log_group_name = f"/aws/lambda/{route.function}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + route.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


Handler = Callable[[dict[str, Any], LambdaContext], Any]
_handlers: dict[str, Handler] = {}
_import_lock = threading.Lock()


def _load_handler(route: template.Route) -> Handler:
    """Import CodeUri/<module>.py under a private name: every function has an app.py."""
    with _import_lock:
        if route.function in _handlers:
            return _handlers[route.function]
        module_name, _, attr = route.handler.rpartition(".")
        path = route.code_dir / f"{module_name.replace('.', '/')}.py"
        spec = importlib.util.spec_from_file_location(f"fn_{route.function}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        handler: Handler = getattr(module, attr)
        _handlers[route.function] = handler
        return handler


def _v2_event(request: Request, route: template.Route, body: bytes) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    query: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        query[key] = f"{query[key]},{value}" if key in query else value
    try:
        text_body: str | None = body.decode() if body else None
        is_b64 = False
    except UnicodeDecodeError:
        text_body, is_b64 = base64.b64encode(body).decode(), True
    now = datetime.now(UTC)
    client = request.client
    return {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": request.url.path,
        "rawQueryString": request.url.query,
        "cookies": [f"{k}={v}" for k, v in request.cookies.items()] or None,
        "headers": headers,
        "queryStringParameters": query or None,
        "pathParameters": dict(request.path_params) or None,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": request.url.hostname or "127.0.0.1",
            "domainPrefix": "local",
            "http": {
                "method": request.method,
                "path": request.url.path,
                "protocol": "HTTP/1.1",
                "sourceIp": client.host if client else "127.0.0.1",
                "userAgent": request.headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route.route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": text_body,
        "isBase64Encoded": is_b64,
    }


def _v2_response(result: Any) -> Response:
    """API Gateway's v2 rules: a dict with statusCode is a response, anything else is JSON."""
    if not (isinstance(result, dict) and "statusCode" in result):
        return Response(json.dumps(result), 200, media_type="application/json")
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
    response = Response(raw, int(result["statusCode"]), headers=headers)
    for cookie in result.get("cookies") or []:
        response.raw_headers.append((b"set-cookie", cookie.encode()))
    return response


def _function_endpoint(route: template.Route) -> Callable[[Request], Any]:
    # Each function gets its own concurrency, as Lambda scales each separately:
    # busy orchestrators can never starve the executors they wait on.
    limiter = anyio.CapacityLimiter(int(os.environ.get("SUPAFLOW_LOCAL_CONCURRENCY", "64")))

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        if len(body) > API_GATEWAY_MAX_BODY:
            return JSONResponse({"message": "Request Entity Too Large"}, 413)
        event = _v2_event(request, route, body)

        def invoke() -> Any:
            handler = _load_handler(route)
            return handler(event, LambdaContext(route))

        try:
            with anyio.CancelScope(shield=True):
                result = await anyio.to_thread.run_sync(invoke, limiter=limiter)
        except Exception:
            # A Lambda that raises gives API Gateway's bare 500, never the trace.
            log.exception("function %s raised", route.function)
            return JSONResponse({"message": "Internal Server Error"}, 500)
        return _v2_response(result)

    return endpoint


def build_app(cfg: StackConfig) -> Starlette:
    sec = load(cfg.secrets_file)
    os.environ.update(function_environment(cfg, sec))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the shared layer, as /opt/python is on Lambda
    rest = httpx.AsyncClient(base_url=cfg.rest_url, timeout=60.0)
    jwks = sec.public_jwks()

    async def jwks_endpoint(_: Request) -> Response:
        return JSONResponse(jwks, headers={"Cache-Control": "public, max-age=600"})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def upsert_user(email: str) -> str:
        """The local user with this email, created if new (Supabase Auth's sign-up)."""
        with psycopg.connect(postgres.database_url(cfg, sec), autocommit=True) as conn:
            row = conn.execute(
                "insert into auth.users (id, email) values (gen_random_uuid(), %s)"
                " on conflict (email) do update set email = excluded.email returning id",
                (email,)).fetchone()
            return str(row[0]) if row else ""

    async def local_user(request: Request) -> Response:
        """The local stack's stand-in for Supabase Auth's sign-up (`supaflow token`): the user
        with this email, created if new. Service-role key only; never deployed."""
        if request.headers.get("authorization", "") != f"Bearer {sec.service_role_key}":
            return JSONResponse({"error": {"code": "unauthorized", "message": "service key"}}, 401)
        try:
            body = await request.json()
        except ValueError:
            body = None
        email = str(body.get("email", "")) if isinstance(body, dict) else ""
        if not 3 <= len(email) <= 254 or "@" not in email:
            return JSONResponse({"error": {"code": "bad_request", "message": "email"}}, 400)

        return JSONResponse({"id": await anyio.to_thread.run_sync(upsert_user, email),
                             "email": email})

    async def local_sign_in(request: Request) -> Response:
        """The dashboard's "sign in as a local user" (GET: whether this is offered). Local
        stack only, bound to 127.0.0.1; a deployment signs in with Supabase Auth."""
        host = request.headers.get("host", "").rsplit(":", 1)[0]
        origin = request.headers.get("origin")
        if host not in ("127.0.0.1", "localhost") or (
                origin is not None and origin.split("//")[-1].rsplit(":", 1)[0] != host):
            return JSONResponse({"error": {"code": "forbidden", "message": "local only"}}, 403)
        if request.method == "GET":
            return JSONResponse({"local": True})
        try:
            body = await request.json()
        except ValueError:
            body = None
        email = str(body.get("email", "")) if isinstance(body, dict) else ""
        if not 3 <= len(email) <= 254 or "@" not in email:
            return JSONResponse({"error": {"code": "bad_request", "message": "email"}}, 400)

        user_id = await anyio.to_thread.run_sync(upsert_user, email)
        now = int(time.time())
        app_metadata = {"supaflow_role": "admin"} if body.get("admin") is True else {}
        token = jwt.encode({"sub": user_id, "role": "authenticated", "aud": "authenticated",
                            "email": email, "app_metadata": app_metadata, "iat": now,
                            "exp": now + 3600}, sec.jwt_secret, algorithm="HS256")
        return JSONResponse({"id": user_id, "email": email, "token": token})

    async def rest_proxy(request: Request) -> Response:
        path = request.path_params["path"]
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        upstream = await rest.request(
            request.method, f"/{path}", params=request.url.query.encode() or None,
            headers=headers, content=await request.body(),
        )
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(upstream.content, upstream.status_code, headers=out)

    routes = [
        StarletteRoute("/_gateway/health", health),
        StarletteRoute("/auth/v1/.well-known/jwks.json", jwks_endpoint),
        StarletteRoute("/_stack/users", local_user, methods=["POST"]),
        StarletteRoute("/_stack/sign-in", local_sign_in, methods=["GET", "POST"]),
        StarletteRoute(
            "/rest/v1/{path:path}", rest_proxy,
            methods=["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"],
        ),
    ]
    for route in template.routes():
        routes.append(StarletteRoute(route.path, _function_endpoint(route), methods=[route.method]))

    async def on_shutdown() -> None:
        await rest.aclose()

    async def no_route(request: Request, exc: Exception) -> Response:
        # API Gateway's answers for paths and methods no route declares.
        status = getattr(exc, "status_code", 404)
        message = "Method Not Allowed" if status == 405 else "Not Found"
        return JSONResponse({"message": message}, 404 if status not in (404, 405) else status)

    app = Starlette(routes=routes, on_shutdown=[on_shutdown],
                    exception_handlers={404: no_route, 405: no_route})
    app.router.redirect_slashes = False  # API Gateway never redirects
    return app


def _die_with_parent() -> None:
    """A worker must not outlive the gateway: a SIGKILLed gateway (the failure tests do
    that) would otherwise leave its workers serving, and a restart beside them."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


def create_app() -> Starlette:
    """The app of one gateway worker process (uvicorn's factory)."""
    if multiprocessing.parent_process() is not None:  # a worker of uvicorn's Multiprocess
        _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return build_app(StackConfig.from_env())


def _listening_socket(host: str, port: int) -> socket.socket:
    """uvicorn's own socket for workers is created with protocol 0, so asyncio never sets
    TCP_NODELAY on its connections and every keep-alive response waited ~40 ms for a
    delayed ACK. This one names TCP, as asyncio's own servers do."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main() -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    cfg = StackConfig.from_env()
    config = uvicorn.Config(
        "stack.gateway:create_app", factory=True, host=cfg.host, port=cfg.api_port,
        workers=int(os.environ.get("SUPAFLOW_GATEWAY_WORKERS", "2")),
        log_level="warning", access_log=False, timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    if config.workers > 1:
        Multiprocess(config, target=server.run,
                     sockets=[_listening_socket(cfg.host, cfg.api_port)]).run()
    else:
        server.run()


if __name__ == "__main__":
    main()
