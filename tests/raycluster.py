"""A private loopback Ray head node for tests: started with ``ray start --head``, stopped by PID.

Other Ray instances may run on the same machine, so this never uses ``ray stop`` (it kills Ray
processes by name, machine-wide) and never kills by name: the cluster's processes are those whose
command line or open files reference its private ``--temp-dir``.

Token authentication is explicit and private: the head and every client get ``RAY_AUTH_MODE=token``,
``RAY_AUTH_TOKEN_PATH`` pointing to a token written here, and their own ``HOME``, so nothing reads
or writes the real ``~/.ray``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))  # the ray CLI of this interpreter's environment


@dataclass
class RayHead:
    temp_dir: str  # the cluster's private --temp-dir; marks its processes
    dashboard_port: int
    gcs_port: int
    client_port: int  # Ray Client server (ray://)
    env: dict = field(repr=False)  # environment for clients (and the head) of this cluster

    @property
    def address(self) -> str:
        """The Jobs API address (the dashboard)."""
        return f"http://127.0.0.1:{self.dashboard_port}"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all bound at once, so no repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_env(root: Path, base: dict | None = None) -> dict:
    """Environment for the head and its clients: loopback only, no usage stats, a private token."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    token = root / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    env = dict(base if base is not None else os.environ)
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(k, None)  # a developer's own cluster settings must not leak in
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        # On Linux this makes get_node_ip_address() return 127.0.0.1, so every socket stays on loopback.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_head(num_cpus: int = 2, base_env: dict | None = None, timeout: float = 90) -> RayHead:
    """Start a head node on 127.0.0.1 with its own temp dir, ports and token; wait for the Jobs API."""
    # Short: Ray's unix socket paths live under it and are limited to ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="safs-ray-")
    env = cluster_env(Path(temp_dir) / "client", base_env)
    gcs, dash, client, agent_http, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = free_ports(9)
    cmd = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
        f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        # Worker ports are left unset: Ray then lets the OS choose them, which cannot collide.
        f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        "--object-store-memory=200000000",  # a good neighbour on a shared machine
    ]
    head = RayHead(temp_dir, dash, gcs, client, env)
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        wait_for_jobs_api(head, timeout)
    except BaseException:
        stop_head(head)
        raise
    return head


def wait_for_jobs_api(head: RayHead, timeout: float) -> None:
    """The dashboard's HTTP server comes up a little after ``ray start`` returns."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{head.address}/api/version", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # an answer (e.g. 401 without the token) also means the server is up
        except OSError:
            if time.time() > deadline:
                raise TimeoutError(f"the Jobs API at {head.address} did not come up in {timeout:.0f} s") from None
            time.sleep(0.5)


def cluster_pids(marker: str) -> list[int]:
    """Processes whose command line or open files (``/proc/PID/fd``) reference ``marker``."""
    me = os.getpid()
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == me:
            continue
        try:
            if marker in " ".join(proc.info["cmdline"] or []) or _fds_reference(proc.pid, marker):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def _fds_reference(pid: int, marker: str) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                if marker in os.readlink(fd):
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_head(head: RayHead, grace: float = 10) -> None:
    """SIGTERM the cluster's processes by PID, SIGKILL what is left (gcs_server and raylet often
    need it), then remove the temp dir."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(head.temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + grace
        while pids and time.time() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.2)
        if not pids:
            break
    shutil.rmtree(head.temp_dir, ignore_errors=True)
