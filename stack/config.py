"""Where the local stack lives and which ports it binds; every value overridable by env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}={raw!r} is not a port number") from exc


@dataclass(frozen=True)
class StackConfig:
    """Paths and ports of one local stack; two stacks differ by state dir and ports."""

    state_dir: Path
    api_port: int
    db_port: int
    rest_port: int
    s3_port: int
    gemini_port: int
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls) -> StackConfig:
        state = Path(os.environ.get("SUPAFLOW_STATE_DIR", REPO / ".stack")).resolve()
        return cls(
            state_dir=state,
            api_port=_port("SUPAFLOW_API_PORT", 54321),
            db_port=_port("SUPAFLOW_DB_PORT", 54322),
            rest_port=_port("SUPAFLOW_REST_PORT", 54323),
            s3_port=_port("SUPAFLOW_S3_PORT", 54324),
            gemini_port=_port("SUPAFLOW_GEMINI_PORT", 54325),
        )

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def pg_socket_dir(self) -> Path:
        return self.state_dir / "pgrun"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def supervisor_pid(self) -> Path:
        return self.state_dir / "supervisor.pid"

    @property
    def postgrest_bin(self) -> Path:
        return Path(os.environ.get("SUPAFLOW_POSTGREST_BIN", REPO / ".stack-bin" / "postgrest"))

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def gemini_url(self) -> str:
        return f"http://{self.host}:{self.gemini_port}"

    def ports(self) -> dict[str, int]:
        return {
            "SUPAFLOW_API_PORT": self.api_port,
            "SUPAFLOW_DB_PORT": self.db_port,
            "SUPAFLOW_REST_PORT": self.rest_port,
            "SUPAFLOW_S3_PORT": self.s3_port,
            "SUPAFLOW_GEMINI_PORT": self.gemini_port,
        }
