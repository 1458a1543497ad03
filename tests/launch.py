"""Launching test workers on 2 CPU processes: a free rendezvous port per launch, and a hang
reported with what the processes printed instead of a bare timeout."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (each launch its own rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_launch(
    command: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a launcher command; a launch still running after `timeout` seconds fails the test
    with the tail of its output so far."""
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        printed = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part or ""
            for part in (hung.stdout, hung.stderr)
        )
        raise AssertionError(f"launch hung for {timeout:.0f} s:\n{printed[-4000:]}") from None
