"""The notebook module's `files` output is sensitive: the spawner still reads it from the state
(on Incus it writes those files itself), and Terraform no longer prints it into run logs."""

import asyncio
import json
from pathlib import Path

import pytest
from conftest import IMAGE, INCUS_SOCKET
from spawnerstub import make_spawner

pytestmark = pytest.mark.e2e


def test_files_output_is_read_from_the_state_and_kept_out_of_run_logs(tmp_path, incus_client):
    secret = "operator-inline-" + "5e1f" * 4
    sp = make_spawner(tmp_path / "state", "sensitive", image=IMAGE, backend="incus", lxd_endpoint=INCUS_SOCKET,
                      files_to_push=[{"target": "/etc/tf-lxd/inline", "content": secret, "mode": "0600"}])

    async def go():
        await sp.start()
        try:
            # files_via_provider = false on Incus: the spawner pushed what the output lists.
            assert incus_client.instances.get(sp.instance).files.get("/etc/tf-lxd/inline") == secret.encode()
            ws = Path(sp.workspace)
            output = json.loads((ws / "terraform.tfstate").read_text())["outputs"]["files"]
            assert output["sensitive"] is True and secret in json.dumps(output["value"])
            logs = list((ws / "logs").glob("*-apply.jsonl"))
            assert logs and not [p for p in logs if secret in p.read_text()]
            printed = [json.loads(line)["outputs"]["files"] for p in logs for line in p.read_text().splitlines()
                       if '"type":"outputs"' in line]
            assert printed and all(o["sensitive"] is True and "value" not in o for o in printed), printed
        finally:
            await sp.stop()

    asyncio.run(go())
    assert not incus_client.instances.exists(sp.instance)
