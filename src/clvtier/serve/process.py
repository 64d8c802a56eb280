"""Run ``clvtier serve`` in a child process on a free loopback port (load runs, tests, scripts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run_dir: Path, port: int, log: Path, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, timeout_s: float = 180) -> subprocess.Popen[bytes]:
    """Start ``clvtier serve --model RUN_DIR`` on 127.0.0.1:``port`` and wait until ``/healthz`` answers.

    The child gets this process's environment without its ``CLVTIER_*`` variables, plus
    ``env``; its log (stderr) goes to ``log``; ``args`` are more ``clvtier serve`` options.

    Raises
    ------
    RuntimeError
        When the server exits or does not answer within ``timeout_s`` (the end of its log is quoted).
    """
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CLVTIER_")}
    child_env.update(env or {})
    cmd = [sys.executable, "-c", "from clvtier.cli import main; main()", "serve", "--model", str(run_dir),
           "--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start within {timeout_s:g} s:\n{log.read_text()[-2000:]}")
