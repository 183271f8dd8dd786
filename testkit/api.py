"""An HTTP client for the public API that checks every response against docs/openapi.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def load_openapi() -> dict[str, Any]:
    loaded = yaml.safe_load(OPENAPI.read_text())
    assert isinstance(loaded, dict)
    return loaded


class Api:
    """Calls the gateway like a user would; fails the test on any undocumented answer."""

    def __init__(self, base_url: str) -> None:
        self.doc = load_openapi()
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.checked: list[tuple[str, str, int]] = []

    def _operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        path = path.partition("?")[0]
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path) and method.lower() in item:
                return template, item[method.lower()]
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    def _content_for(self, operation: dict[str, Any], status: int) -> dict[str, Any]:
        responses = operation["responses"]
        assert str(status) in responses, f"status {status} is not documented"
        response = responses[str(status)]
        if "$ref" in response:
            response = self.doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        content: dict[str, Any] = response["content"]
        return content

    def check(self, method: str, path: str, response: httpx.Response) -> None:
        template, operation = self._operation(method, path)
        assert "Traceback" not in response.text
        content = self._content_for(operation, response.status_code)
        media = response.headers["content-type"].partition(";")[0].strip()
        if media != "application/json":  # a documented text answer (Prometheus, HTML)
            assert media in content and response.text, (media, response.text[:200])
            self.checked.append((method.upper(), template, response.status_code))
            return
        assert "application/json" in content, response.text
        schema = content["application/json"]["schema"]
        jsonschema.Draft202012Validator(
            {**schema, "components": self.doc["components"]},
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        ).validate(response.json())
        self.checked.append((method.upper(), template, response.status_code))

    def request(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = self.http.request(method, path, headers=headers, **kwargs)
        self.check(method, path, response)
        return response

    def start(self, token: str | None, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.request("POST", "/workflows/start", token, **kwargs)
