"""The private Postgres 15 cluster: create, start, stop, bootstrap, migrate."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg

from stack.config import REPO, StackConfig
from stack.secrets import StackSecrets

PG_BIN = Path(os.environ.get("SUPAFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
MIGRATIONS = REPO / "supabase" / "migrations"
COMPAT_SQL = Path(__file__).with_name("supabase_compat.sql")


def _as_db_owner(cmd: list[str]) -> list[str]:
    """initdb refuses root: run the server as the `postgres` user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _chown_to_db_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user="postgres", group="postgres")


def database_url(cfg: StackConfig, sec: StackSecrets) -> str:
    return f"postgresql://postgres:{sec.db_password}@{cfg.host}:{cfg.db_port}/postgres"


def init_cluster(cfg: StackConfig, sec: StackSecrets) -> bool:
    """Create the cluster on first start; returns False when it already exists."""
    if (cfg.pgdata / "PG_VERSION").exists():
        return False
    for path in (cfg.state_dir, cfg.pgdata, cfg.pg_socket_dir, cfg.logs):
        path.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.pgdata, 0o700)
    for path in (cfg.pgdata, cfg.pg_socket_dir):
        _chown_to_db_owner(path)
    if os.geteuid() == 0:
        # The postgres user must be able to reach its folders inside the state dir.
        os.chmod(cfg.state_dir, 0o711)  # noqa: S103 - traverse only, no listing
    pwfile = cfg.pg_socket_dir / "initpw"
    pwfile.write_text(sec.db_password)
    _chown_to_db_owner(pwfile)
    try:
        subprocess.run(
            _as_db_owner([
                str(PG_BIN / "initdb"), "-D", str(cfg.pgdata), "-U", "postgres",
                "--auth-local=trust", "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8",
            ]),
            check=True, capture_output=True, text=True,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    conf = cfg.pgdata / "postgresql.conf"
    with conf.open("a") as handle:
        handle.write(
            "\n# supaflow local stack\n"
            "shared_preload_libraries = 'pg_cron'\n"
            "cron.database_name = 'postgres'\n"
            "cron.use_background_workers = on\n"
            "max_worker_processes = 32\n"
            "max_connections = 200\n"
            "fsync = on\n"
            "log_min_messages = warning\n"
        )
    return True


def _server_options(cfg: StackConfig) -> str:
    return f"-p {cfg.db_port} -c listen_addresses={cfg.host} -k {cfg.pg_socket_dir}"


def is_running(cfg: StackConfig) -> bool:
    if not (cfg.pgdata / "PG_VERSION").exists():
        return False
    result = subprocess.run(
        _as_db_owner([str(PG_BIN / "pg_ctl"), "status", "-D", str(cfg.pgdata)]),
        capture_output=True, text=True, check=False,
    )
    return result.returncode == 0


def start(cfg: StackConfig) -> None:
    if is_running(cfg):
        return
    logfile = cfg.logs / "postgres.log"
    logfile.touch()
    _chown_to_db_owner(logfile)
    result = subprocess.run(
        _as_db_owner([
            str(PG_BIN / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(cfg.pgdata),
            "-l", str(logfile), "-o", _server_options(cfg),
        ]),
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        tail = logfile.read_text()[-2000:]
        raise RuntimeError(f"Postgres did not start:\n{result.stderr}\n{tail}")


def stop(cfg: StackConfig) -> None:
    if not is_running(cfg):
        return
    subprocess.run(
        _as_db_owner([str(PG_BIN / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(cfg.pgdata)]),
        capture_output=True, text=True, check=False,
    )


def restart(cfg: StackConfig) -> None:
    """Used by failure tests: a fast restart drops every connection."""
    subprocess.run(
        _as_db_owner([
            str(PG_BIN / "pg_ctl"), "restart", "-w", "-m", "fast", "-D", str(cfg.pgdata),
            "-l", str(cfg.logs / "postgres.log"), "-o", _server_options(cfg),
        ]),
        capture_output=True, text=True, check=True,
    )


def bootstrap(cfg: StackConfig, sec: StackSecrets) -> list[str]:
    """Apply the Supabase compatibility layer and new migrations; return what was applied."""
    with psycopg.connect(database_url(cfg, sec), autocommit=True) as conn:
        conn.execute(COMPAT_SQL.read_text().encode())
        conn.execute(
            psycopg.sql.SQL("alter role authenticator with password {}").format(
                psycopg.sql.Literal(sec.authenticator_password)
            )
        )
        applied = apply_migrations(conn, cfg.pgdata)
        store_vault_secrets(conn, cfg, sec)
        conn.execute("notify pgrst, 'reload schema'")
    return applied


class StaleCluster(SystemExit):
    """The local cluster applied a migration file that has changed since."""


def apply_migrations(conn: psycopg.Connection[tuple[object, ...]], pgdata: Path) -> list[str]:
    """Each new migration in its own transaction, recorded with its version and text.

    Until the first release, migrations are still edited in place; a local cluster
    that applied an older text would run old SQL under new code, so it is refused."""
    done = {str(version): text for version, text in conn.execute(
        "select version, statements[1] from supabase_migrations.schema_migrations")}
    applied = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        text = path.read_text()
        if version in done:
            if done[version] != text:
                raise StaleCluster(
                    f"migration {path.name} changed since this local database applied it; "
                    f"start from a fresh one: stop the stack, rm -rf {pgdata}, start it again")
            continue
        with conn.transaction():
            conn.execute(text.encode())
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, name, statements)"
                " values (%s, %s, array[%s])", (version, name, text),
            )
        applied.append(path.name)
    return applied


def store_vault_secrets(
    conn: psycopg.Connection[tuple[object, ...]], cfg: StackConfig, sec: StackSecrets
) -> None:
    """The secrets the pg_cron schedule reads: on hosted Supabase the user stores these."""
    values = {
        "supaflow_orchestrator_url": f"{cfg.api_url}/internal/orchestrator",
        "supaflow_internal_token": sec.internal_token,
    }
    for name, value in values.items():
        row = conn.execute("select id from vault.secrets where name = %s", (name,)).fetchone()
        if row:
            conn.execute("select vault.update_secret(%s, %s)", (row[0], value))
        else:
            conn.execute("select vault.create_secret(%s, %s)", (value, name))
