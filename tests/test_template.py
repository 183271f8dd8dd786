"""template.yaml stays deployable: cfn-lint finds nothing, and every route has a real handler."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from cfnlint.api import ManualArgs, lint_file

from stack.config import REPO
from stack.template import load_template, routes
from testkit.api import load_openapi

TEMPLATE = REPO / "template.yaml"


def test_cfn_lint_finds_no_errors() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1"]))
    errors = [str(m) for m in matches if m.rule.id.startswith("E")]
    assert errors == []


def test_every_route_resolves_to_an_importable_handler(tmp_path: Path) -> None:
    found = routes()
    assert found, "template.yaml declares no HttpApi route"
    for route in found:
        module, _, attr = route.handler.rpartition(".")
        path = route.code_dir / f"{module}.py"
        assert path.exists(), f"{route.function}: {path} missing"
        # Import in a fresh process, as Lambda does, with only the layer on the path.
        code = (
            "import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('app', {str(path)!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            f"assert callable(getattr(mod, {attr!r}))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{route.function}: {result.stderr}"
    assert importlib.util.find_spec("shared") is not None


def test_public_routes_match_the_openapi_document() -> None:
    doc = load_openapi()
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    public = {(r.method, r.path) for r in routes() if not r.path.startswith("/internal/")}
    assert public == documented


def test_the_orchestrator_can_sign_alerts() -> None:
    """It delivers alerts signed like webhook-call: without the secret it sends none."""
    resources = load_template()["Resources"]
    env = resources["OrchestratorFunction"]["Properties"]["Environment"]["Variables"]
    assert env["SUPAFLOW_WEBHOOK_SECRET"] == {"Ref": "WebhookSecret"}


def test_secrets_are_noecho_parameters() -> None:
    params = load_template()["Parameters"]
    for name in ("SupabaseAnonKey", "SupabaseServiceRoleKey", "SupabaseJwtSecret", "InternalToken"):
        assert params[name].get("NoEcho") is True, name
