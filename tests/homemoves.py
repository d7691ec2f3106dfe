"""A home volume on a pool local to each cluster member is never replaced (issue 27), through
a real hub on a loopback cluster (LXD's in test_cluster.py, Incus's in test_incus_cluster.py):
moved by hand (`storage volume move`), the next start follows it (audited, its file there); on an
evacuated member the start is refused with a message and nothing is made; `tf-lxd-spawner home
move` moves it (its state brought along) and the server starts where it went, the file with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

USER, VOLUME = "mover", "home-mover"


def follow_refuse_move(hub, cluster) -> None:
    cli = [str(Path(sys.executable).parent / "tf-lxd-spawner"), "-f", str(hub.workdir / "jupyterhub_config.py"),
           "home"]
    token = hub.user_token(USER)

    def locations():
        return {i["name"]: i["location"] for i in cluster.api("GET", "/1.0/instances?recursion=1")["metadata"]}

    def spawn_and_read():
        assert hub.start_server(USER).status_code in (201, 202)
        hub.wait_ready(USER, timeout=300)
        return hub.run_code(USER, token, "import os; print(open(os.path.expanduser('~/f.txt')).read())").strip()

    def stop():
        hub.api("DELETE", f"/users/{USER}/server")
        hub.wait_stopped(USER)

    def volume_member():
        found = [v["location"] for v in cluster.api("GET", "/1.0/storage-pools/local/volumes?recursion=1")["metadata"]
                 if v["name"] == VOLUME and v["type"] == "custom"]
        assert len(found) == 1, found
        return found[0]

    assert hub.start_server(USER).status_code in (201, 202)
    hub.wait_ready(USER, timeout=300)
    hub.run_code(USER, token, "import os; open(os.path.expanduser('~/f.txt'), 'w').write('mine')")
    stop()
    first = volume_member()
    other = next(m.name for m in cluster.members if m.name != first)
    cluster.first.lxc("storage", "volume", "move", f"local/{VOLUME}", f"local/{VOLUME}", "--target", first,
                      "--destination-target", other)
    assert volume_member() == other
    assert spawn_and_read() == "mine"
    assert locations()[f"jupyter-{USER}"] == other
    audit = [json.loads(line) for line in
             (hub.state_dir / USER / "_volumes" / VOLUME / "audit.jsonl").read_text().splitlines()]
    assert any(r["operation"] == "volume-follow" and r["to"] == other for r in audit), audit
    stop()

    cluster.first.lxc("cluster", "evacuate", other, "--force")
    cluster.wait_status(other, "Evacuated")
    try:
        assert hub.start_server(USER).status_code in (201, 202)
        events = hub.progress_events(USER)
        assert events[-1].get("failed") and f"cluster member {other}" in events[-1]["message"], events[-1]
        assert volume_member() == other and f"jupyter-{USER}" not in locations()
    finally:
        cluster.first.lxc("cluster", "restore", other, "--force", check=False)
        cluster.wait_status(other, "Online")
    hub.wait_stopped(USER)

    back = next(m.name for m in cluster.members if m.name != other)
    r = subprocess.run([*cli, "move", "--user", USER, "--to", back], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert volume_member() == back
    assert spawn_and_read() == "mine"
    assert locations()[f"jupyter-{USER}"] == back
    audit = [json.loads(line) for line in
             (hub.state_dir / USER / "_volumes" / VOLUME / "audit.jsonl").read_text().splitlines()]
    assert any(r["operation"] == "move" and r["to"] == back and r["outcome"] == "ok" for r in audit), audit
    stop()
