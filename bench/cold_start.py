"""Cold start: the time to import each function's handler module in a fresh process.

For every function of template.yaml, a new interpreter imports CodeUri/app.py the way
the Lambda runtime (and the local gateway) does, with the functions' environment set,
and reports the import time, the heavy SDKs it loaded (google-genai, boto3) and its
peak RSS. One more run with `-X importtime` names the slowest top-level imports.
No stack is needed.

Two environments: the project venv (which also holds the dev tools: some libraries
import more when optional packages are present), and, with --layer, the shared layer
as SAM builds it (`pip install --target DIR .[executors]`, the Makefile's
build-SharedLayer), on a bare interpreter (`python -S`), as on Lambda.

    python -m bench.cold_start [--runs 5] [--layer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import log, median, write_result
from stack.config import REPO
from stack.template import routes

API_FUNCTIONS = ("StartWorkflowFunction", "GetJobFunction", "ListJobsFunction")
HEAVY = ("google.genai", "boto3", "botocore", "moto", "jsonschema", "pydantic", "postgrest", "supabase")

CHILD = r"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
path, attr = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("fn_cold_start", path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
getattr(module, attr)
elapsed = time.perf_counter() - t0
peak = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1])
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"import_ms": elapsed * 1000, "peak_rss_mib": peak / 1024, "heavy": heavy,
                  "modules": len(sys.modules)}))
"""


LAYER_DIR = REPO / ".stack-bench" / "layer"


def build_layer() -> Path:
    """The shared layer's dependencies, as `make build-SharedLayer` installs them; cached
    until pyproject.toml changes."""
    stamp = LAYER_DIR / ".pyproject"
    wanted = (REPO / "pyproject.toml").read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return LAYER_DIR
    log(f"building the shared layer's dependencies in {LAYER_DIR} (pip install --target)")
    shutil.rmtree(LAYER_DIR, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--target", str(LAYER_DIR), ".[executors]"], cwd=REPO, check=True,
                   stderr=subprocess.DEVNULL)
    stamp.write_text(wanted)
    return LAYER_DIR


def child_env(layer: Path | None = None) -> dict[str, str]:
    """The functions' variables, as template.yaml sets them (values do not matter to an import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "SUPAFLOW_"))}
    env.update({
        "SUPABASE_URL": "http://127.0.0.1:55421", "SUPABASE_ANON_KEY": "x",
        "SUPABASE_SERVICE_ROLE_KEY": "x", "SUPABASE_JWT_SECRET": "x",
        "SUPAFLOW_INTERNAL_TOKEN": "x" * 32, "POWERTOOLS_SERVICE_NAME": "supaflow",
        # The shared layer (/opt/python on Lambda), then its dependencies when measured apart.
        "PYTHONPATH": f"{layer}:{REPO}" if layer else str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def interpreter(layer: Path | None) -> list[str]:
    """The venv's python, or, for the layer, the same python without site-packages."""
    return [sys.executable, "-S"] if layer else [sys.executable]


def import_once(path: str, attr: str, layer: Path | None = None) -> dict[str, Any]:
    code = f"HEAVY = {HEAVY!r}\n{CHILD}"
    started = time.perf_counter()
    result = subprocess.run([*interpreter(layer), "-c", code, path, attr], cwd="/",
                            env=child_env(layer), capture_output=True, text=True, timeout=120,
                            check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"importing {path} failed:\n{result.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    data["process_ms"] = wall * 1000
    return data


def heaviest_packages(path: str, attr: str, layer: Path | None = None,
                      top: int = 8) -> list[dict[str, Any]]:
    """Third-party packages by the import time spent in their own modules (`-X importtime`
    self times, summed per top-level package)."""
    code = f"HEAVY = {HEAVY!r}\n{CHILD}"
    result = subprocess.run([*interpreter(layer), "-X", "importtime", "-c", code, path, attr],
                            cwd="/", env=child_env(layer), capture_output=True, text=True,
                            timeout=120, check=False)
    self_us: dict[str, int] = {}
    for line in result.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        self_us[package] = self_us.get(package, 0) + int(parts[0])
    ranked = sorted(self_us.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": name, "self_ms": round(us / 1000, 1)} for name, us in ranked]


def measure(layer: Path | None, runs: int) -> dict[str, Any]:
    where = "layer" if layer else "venv"
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.py"
        empty.write_text("handler = None\n")
        baseline = [import_once(str(empty), "handler", layer)["process_ms"] for _ in range(runs)]
    log(f"[{where}] bare interpreter start (python -c, empty module): "
        f"median {median(baseline):.0f} ms")
    functions: dict[str, Any] = {}
    for route in routes():
        if route.function in functions:
            continue
        module, _, attr = route.handler.rpartition(".")
        path = str(route.code_dir / f"{module.replace('.', '/')}.py")
        samples = [import_once(path, attr, layer) for _ in range(runs)]
        entry = {
            "route": route.route_key,
            "import_ms_median": round(median([s["import_ms"] for s in samples]), 1),
            "import_ms_min": round(min(s["import_ms"] for s in samples), 1),
            "import_ms_max": round(max(s["import_ms"] for s in samples), 1),
            "process_ms_median": round(median([s["process_ms"] for s in samples]), 1),
            "peak_rss_mib": round(median([s["peak_rss_mib"] for s in samples]), 1),
            "modules_loaded": samples[0]["modules"],
            "heavy_sdks_loaded": sorted({"google.genai", "boto3"} & set(samples[0]["heavy"])),
            "libraries_loaded": samples[0]["heavy"],
            "heaviest_packages": heaviest_packages(path, attr, layer),
            "api_function": route.function in API_FUNCTIONS,
        }
        functions[route.function] = entry
        log(f"[{where}] {route.function:28} import median {entry['import_ms_median']:7.1f} ms "
            f"(min {entry['import_ms_min']}, max {entry['import_ms_max']}), "
            f"peak RSS {entry['peak_rss_mib']} MiB, heavy SDKs: {entry['heavy_sdks_loaded'] or 'none'}")
    api = [functions[f]["import_ms_median"] for f in API_FUNCTIONS if f in functions]
    leaks = {name: f["heavy_sdks_loaded"] for name, f in functions.items()
             if f["heavy_sdks_loaded"] and name not in ("ExecuteHttpDownloadFunction",
                                                        "ExecuteGeminiPromptFunction")}
    log(f"[{where}] API functions: slowest median import {max(api) if api else None} ms; "
        f"heavy SDKs loaded where not needed: {leaks or 'none'}")
    return {"interpreter_start_ms_median": round(median(baseline), 1), "functions": functions,
            "api_functions_import_ms_max_of_medians": max(api) if api else None,
            "heavy_sdks_where_not_needed": leaks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per function")
    parser.add_argument("--layer", action="store_true",
                        help="also measure on the shared layer as SAM builds it (needs pip)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"params": vars(args), "venv": measure(None, args.runs)}
    if args.layer:
        result["layer"] = measure(build_layer(), args.runs)
    write_result("cold_start", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
