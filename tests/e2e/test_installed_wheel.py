"""The spawner as an operator installs it: from the wheel, not this source checkout.

Every other test imports the package from the repository (an editable install), where the
module and templates sit beside the code. Here the wheel is built and installed into a venv of
its own, and a real hub runs from that venv with the defaults an operator starts from: the
notebook module shipped inside the wheel, and a relative state_dir.
"""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hubtools import Hub, shut_down

from tf_lxd_spawner.systems import modules

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies come from the test venv (no download); the package itself only from the wheel.
    Path(site, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # (from another directory: `python -c` puts the working directory first on sys.path)
    where = subprocess.run([str(python), "-c", "import tf_lxd_spawner.spawner as s; print(s.default_module_source())"],
                           check=True, capture_output=True, text=True, cwd=work).stdout.strip()
    assert where.startswith(site), where  # the packaged module, not the repository's
    # The storage module (a user's home volume) is packaged beside it, with its tests and docs.
    for f in ("versions.tf", "variables.tf", "main.tf", "outputs.tf", "README.md", "tests/storage.tftest.hcl"):
        assert (Path(where).parent / "storage" / f).is_file(), f
    return python, where


def test_hub_from_the_installed_wheel_spawns_with_the_packaged_module(installed, tmp_path, lxd_client):
    python, module = installed
    hub = Hub(tmp_path, 'c.LxdSpawner.state_dir = "relative-state"\n', python=str(python))
    hub.state_dir = tmp_path / "relative-state"  # what the teardown looks for
    hub.start()
    try:
        token = hub.user_token("operator")
        assert hub.start_server("operator").status_code in (201, 202)
        hub.wait_ready("operator")
        assert hub.run_code("operator", token, "print(6 * 7)").strip() == "42"
        ws = tmp_path / "relative-state" / "operator" / "_default"  # relative to the hub's directory
        # The workspace names the state_dir's copy of the packaged module (a reinstall elsewhere
        # never strands it), and that copy is the wheel's module.
        source = modules.named_source((ws / "main.tf").read_text())
        assert Path(source).parent == tmp_path / "relative-state" / "_modules", source
        for f in ("versions.tf", "variables.tf", "main.tf", "outputs.tf"):
            assert (Path(source) / f).read_text() == (Path(module) / f).read_text(), f
        hub.api("DELETE", "/users/operator/server")
        hub.wait_stopped("operator")
        assert [json.loads(r)["operation"] for r in (ws / "audit.jsonl").read_text().splitlines()] == ["start", "stop"]
    finally:
        shut_down(hub, lxd_client)
