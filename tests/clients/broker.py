"""A real `chronik start` process for client tests: start, SIGTERM, SIGKILL, restart.

Every test talks to a broker process over loopback exactly as a user would; the
broker's log goes to a file that is checked for panics when the broker stops.
"""

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def chronik_bin() -> str:
    path = os.environ.get("CHRONIK_BIN", str(ROOT / "target" / "release" / "chronik"))
    if not os.path.exists(path):
        raise RuntimeError(f"chronik binary not found at {path}: run `cargo build --release` or tests/run")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_versions_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once the broker answers an ApiVersions v0 request (the handshake every client starts with)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            client_id = b"chronik-tests"
            body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
            s.sendall(struct.pack(">i", len(body)) + body)
            header = recv_exact(s, 4)
            (size,) = struct.unpack(">i", header)
            payload = recv_exact(s, size)
            correlation, error = struct.unpack(">ih", payload[:6])
            return correlation == 1 and error == 0
    except OSError:
        return False


def recv_exact(s: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes from `s` (OSError if the peer closes first)."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


class Broker:
    """One chronik broker process with its own data directory and port."""

    def __init__(self, data_dir: Path, node_id: int = 1, cores: int | None = None, extra_args=()):
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.port = free_port()
        self.cores = cores
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"broker-{node_id}-{self.port}.log"
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Broker":
        self.start_process()
        return self.wait_ready(timeout)

    def start_process(self) -> None:
        """Launches the process without waiting (cluster members must start together)."""
        args = [chronik_bin(), "start", "--node-id", str(self.node_id),
                "--listen", self.bootstrap, "--data-dir", str(self.data_dir)]
        if self.cores is not None:
            args += ["--cores", str(self.cores)]
        args += self.extra_args
        env = dict(os.environ)
        # Replication logs its unusual turns (refused pushes, retries) at debug: keep them.
        env.setdefault("RUST_LOG", "info,chronik::replication=debug")
        env.setdefault("RUST_BACKTRACE", "1")
        log = open(self.log_path, "ab")
        log.write(f"\n----- start #{self.starts}: {' '.join(args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()  # the child holds its own descriptor
        self.starts += 1

    def wait_ready(self, timeout: float = 30.0) -> "Broker":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if api_versions_ok("127.0.0.1", self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"broker did not answer ApiVersions within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"broker did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> "Broker":
        self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def assert_no_panic(self) -> None:
        text = self.log_text()
        assert "panicked at" not in text, f"broker panicked:\n{self.log_tail(120)}"
