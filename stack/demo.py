"""Runs the audio transcription example end to end against the local stack and prints the result.

`make example` (or `python -m stack.demo [--audio-url URL]`). Without a URL it
serves a generated one-second WAV from this machine. With GEMINI_API_KEY set
when the stack started, the transcript comes from Gemini; otherwise from the
local server that speaks Gemini's wire format.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import sys
import threading
import time
import uuid
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import psycopg

from stack.config import StackConfig
from stack.postgres import database_url
from stack.secrets import load

TERMINAL = ("completed", "failed", "cancelled")


def sine_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buf.getvalue()


def serve_audio(body: bytes) -> ThreadingHTTPServer:
    class Audio(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Audio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def demo_user_token(cfg: StackConfig) -> str:
    sec = load(cfg.secrets_file)
    user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "supaflow-demo-user"))
    with psycopg.connect(database_url(cfg, sec), autocommit=True) as conn:
        conn.execute("insert into auth.users (id, email) values (%s, 'demo@example.test')"
                     " on conflict (id) do nothing", (user_id,))
    now = int(time.time())
    claims = {"sub": user_id, "aud": "authenticated", "role": "authenticated",
              "iat": now, "exp": now + 3600, "email": "demo@example.test"}
    return jwt.encode(claims, sec.jwt_secret, algorithm="HS256")


def run(audio_url: str | None, timeout_s: float) -> dict[str, Any]:
    cfg = StackConfig.from_env()
    server = None
    if audio_url is None:
        server = serve_audio(sine_wav())
        audio_url = f"http://127.0.0.1:{server.server_address[1]}/sample.wav"
    headers = {"Authorization": f"Bearer {demo_user_token(cfg)}"}
    try:
        with httpx.Client(base_url=cfg.api_url, headers=headers, timeout=30) as api:
            started = api.post("/workflows/start", json={
                "workflow_id": "audio_transcription_v1", "input_data": {"audio_url": audio_url}})
            started.raise_for_status()
            job_id = started.json()["job_id"]
            print(f"started job {job_id}", file=sys.stderr)
            deadline = time.monotonic() + timeout_s
            while True:
                job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
                if job["status"] in TERMINAL or time.monotonic() > deadline:
                    return job
                time.sleep(0.2)
    finally:
        if server:
            server.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the audio transcription example.")
    parser.add_argument("--audio-url", help="an audio file to transcribe (default: a generated tone)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    job = run(args.audio_url, args.timeout)
    print(json.dumps({k: job[k] for k in ("job_id", "status", "final_result", "error_message")},
                     indent=2))
    return 0 if job["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
