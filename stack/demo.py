"""Runs the audio transcription example end to end against the local stack with the
`supaflow` command: deploy the example's files, then run the workflow and watch it.

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
import os
import struct
import subprocess
import sys
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from stack.config import REPO, StackConfig
from stack.environment import client_environment
from stack.secrets import load


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


def run(audio_url: str | None, timeout_s: float, *,
        json_output: bool = False) -> subprocess.CompletedProcess[str]:
    """`supaflow deploy` the example, then `supaflow run ... --wait` it, as a user would. With
    json_output, the final job is the run's stdout, as JSON (the live view is for people)."""
    cfg = StackConfig.from_env()
    env = {k: v for k, v in os.environ.items() if k != "SUPAFLOW_TOKEN"}
    env.update(client_environment(cfg, load(cfg.secrets_file)))
    cli = str(Path(sys.executable).parent / "supaflow")
    server = None
    if audio_url is None:
        server = serve_audio(sine_wav())
        audio_url = f"http://127.0.0.1:{server.server_address[1]}/sample.wav"
    # --url: this stack, whatever SUPAFLOW_URL the caller's environment names.
    deploy = [cli, "deploy", str(REPO / "examples" / "audio_transcription"), "--yes",
              "--url", cfg.api_url]
    start = [cli, "run", "audio_transcription_v1", "--input", json.dumps({"audio_url": audio_url}),
             "--wait", "--timeout", str(timeout_s), "--url", cfg.api_url,
             *(["--json"] if json_output else [])]
    try:
        print("$ supaflow " + " ".join(deploy[1:]), file=sys.stderr, flush=True)
        deployed = subprocess.run(deploy, env=env, check=False, text=True)
        if deployed.returncode != 0:
            return deployed
        print("$ supaflow " + " ".join(start[1:]), file=sys.stderr, flush=True)
        return subprocess.run(start, env=env, check=False, text=True,
                              stdout=subprocess.PIPE if json_output else None)
    finally:
        if server:
            server.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the audio transcription example.")
    parser.add_argument("--audio-url", help="an audio file to transcribe (default: a generated tone)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    return run(args.audio_url, args.timeout).returncode


if __name__ == "__main__":
    sys.exit(main())
