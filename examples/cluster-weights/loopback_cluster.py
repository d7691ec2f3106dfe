"""A two-member Incus cluster on this machine's loopback (m1 on 127.0.0.21, m2 on 127.0.0.22),
so the cluster-weights example runs without a real cluster. It is the test suite's
tests/lxdcluster.py (what tests/e2e/test_incus_cluster.py uses); the machine's own daemons are
left alone.

    .venv/bin/python examples/cluster-weights/loopback_cluster.py

brings it up (about a minute), copies the `jupyter-notebook` image in, writes
.cache/examples/cluster-weights/cluster.json (read by jupyterhub_config.py), and keeps it up
until Ctrl-C; then it deletes the cluster's instances, stops its daemons and removes it all.
Stop the hub's servers first: their workspaces would otherwise name a cluster that is gone
(`tf-lxd-spawner -f examples/cluster-weights/jupyterhub_config.py orphans --destroy` cleans up).
"""

import json
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from lxdcluster import INCUS, LxdCluster  # noqa: E402

SETTINGS = REPO / ".cache" / "examples" / "cluster-weights" / "cluster.json"


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="tf-example-cluster-", dir="/var/tmp"))
    base.chmod(0o711)  # unprivileged container roots must traverse to their rootfs
    cluster = LxdCluster(base, size=2, kind=INCUS)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on kill too
    try:
        print("bringing up m1 (127.0.0.21) and m2 (127.0.0.22)...", flush=True)
        cluster.up()
        export = base / "export"
        export.mkdir()
        cluster.import_image_from_host("jupyter-notebook", export)
        SETTINGS.parent.mkdir(parents=True, exist_ok=True)
        SETTINGS.write_text(json.dumps({"backend": "incus", "endpoint": cluster.first.url, "cert": str(cluster.cert),
                                        "key": str(cluster.key), "verify": str(cluster.server_cert)}))
        print(f"cluster up; {SETTINGS} written. Now: make demo EXAMPLE=cluster-weights. Ctrl-C ends it.", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        SETTINGS.unlink(missing_ok=True)
        print("taking the cluster down...", flush=True)
        cluster.down()


if __name__ == "__main__":
    main()
