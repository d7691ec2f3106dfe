"""The oldest JupyterHub the supported range takes (jupyterhub>=5.2): a real 5.2 hub (its own
venv, made by `make setup`) spawns with a profile, refuses an option that is not on offer with
the reason and without a 500, and stops; nothing of JupyterHub 6 (SpawnException, rename,
the pending page's Stop button) is needed for that."""

import json
import os
import re
import subprocess

import pytest
from conftest import CACHE, IMAGE
from hubtools import Hub, shut_down

pytestmark = pytest.mark.e2e
PYTHON = CACHE / "jupyterhub-5.2" / "bin" / "python"


def test_jupyterhub_52_spawns_a_profile_refuses_what_is_not_offered_and_stops(tmp_path, incus_client):
    version = subprocess.run([str(PYTHON), "-c", "import jupyterhub; print(jupyterhub.__version__)"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert version.startswith("5.2."), version
    hub = Hub(tmp_path, f"""
c.LxdSpawner.backend = "incus"
c.LxdSpawner.terraform_path = "tofu"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.storage_enabled = False
# The start request waits for a quick failure, so its answer carries the reason (a 5.2 hub
# keeps no failed spawn's message for a progress request that comes after it ended).
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 10}}
c.LxdSpawner.profile_list = [
    {{"display_name": "Small", "default": True, "kubespawner_override": {{"mem_limit": "512M"}}}},
    {{"display_name": "Large", "kubespawner_override": {{"mem_limit": "1G"}}}},
]
""", python=str(PYTHON), env={"PATH": f"{os.environ['PATH']}:{CACHE / 'bin'}"})
    hub.start()
    try:
        token = hub.user_token("olduser")
        since = hub.log_path.stat().st_size
        r = hub.start_server("olduser", options={"profile": "huge"})
        assert r.status_code == 400, (r.status_code, r.text)
        message = r.json()["message"]
        assert "profile 'huge' does not exist" in message, message
        log = hub.log_path.read_bytes()[since:].decode(errors="replace")
        # No 500 answer. (JupyterHub 5.2 itself logs every failed spawn as "Unhandled error"
        # with a traceback, ours included: only 6.0's SpawnException changed that.)
        assert not re.search(r"\b500 (GET|POST|DELETE) /hub/api/users/olduser", log), log[-3000:]
        assert hub.start_server("olduser", options={"profile": "large"}).status_code in (201, 202)
        hub.wait_ready("olduser")
        assert incus_client.instances.get("jupyter-olduser").config["limits.memory"] == str(1024**3)
        assert hub.run_code("olduser", token, "print(6 * 7)").strip() == "42"
        record = json.loads((hub.state_dir / "olduser" / "_default" / "audit.jsonl").read_text()
                            .splitlines()[-1])
        assert (record["operation"], record["outcome"], record["profile"]) == ("start", "ok", "large")
        assert hub.api("DELETE", "/users/olduser/server").status_code in (202, 204)
        hub.wait_stopped("olduser")
        assert not incus_client.instances.exists("jupyter-olduser")
    finally:
        shut_down(hub, incus_client)
