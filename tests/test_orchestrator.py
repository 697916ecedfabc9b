"""Ray glue: the local Ray safs starts listens on the loopback only."""

import json
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import subprocess_env
from conftest import kill_ray_leftovers

LISTENING = """
import json, psutil
from safs.tune.experiment import ensure_ray
ensure_ray(num_cpus=1)
import ray
addresses = {}
for p in [psutil.Process()] + psutil.Process().children(recursive=True):
    try:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                addresses.setdefault(c.laddr.ip, []).append(p.name())
    except psutil.Error:
        pass
print(json.dumps({"listening": addresses, "node_ip": ray.util.get_node_ip_address()}))
ray.shutdown()
"""


@pytest.mark.timeout(180)
def test_local_ray_listens_on_loopback_only():
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    try:
        p = subprocess.run([sys.executable, "-c", LISTENING], env=env, capture_output=True, text=True, timeout=150)
    finally:
        kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["node_ip"] == "127.0.0.1"
    names = {n for ns in got["listening"].values() for n in ns}
    assert {"gcs_server", "raylet"} <= names  # the probe sees Ray's own servers
    assert set(got["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, got["listening"]
