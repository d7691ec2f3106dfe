"""The notebook module alone, with the real Terraform, the real LXD provider and real LXD:
apply, reach the Jupyter server through the proxy device, destroy."""

import json
import subprocess
import time
import uuid

import pytest
import requests
from conftest import IMAGE, MODULE_DIR, free_port, terraform_env

pytestmark = pytest.mark.e2e

ROOT_TF = """
terraform {
  required_providers {
    lxd = { source = "terraform-lxd/lxd" }
  }
}
provider "lxd" {
  refresh_interval = "250ms"
}
variable "name" { type = string }
variable "image" { type = string }
variable "listen_port" { type = number }
variable "server_environment" {
  type      = map(string)
  sensitive = true
}
module "notebook" {
  source             = "%s"
  name               = var.name
  image              = var.image
  listen_port        = var.listen_port
  user               = { name = "smoke", uid = 1000, gid = 1000, home = "/home/smoke" }
  server_cmd         = ["jupyter-server", "--ip=127.0.0.1", "--port=8888", "--ServerApp.root_dir=/home/smoke"]
  server_environment = var.server_environment
}
output "out" { value = module.notebook }
"""


def tf(workdir, *args, env):
    return subprocess.run(["terraform", *args], cwd=workdir, env=env, capture_output=True, text=True, check=True)


def test_module_apply_serve_destroy(tmp_path, lxd_client):
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    port = free_port()
    token = uuid.uuid4().hex
    (tmp_path / "main.tf").write_text(ROOT_TF % MODULE_DIR)
    (tmp_path / "terraform.tfvars.json").write_text(json.dumps({"name": name, "image": IMAGE, "listen_port": port}))
    # The token reaches Terraform through the environment, never argv.
    env = terraform_env(TF_VAR_server_environment=json.dumps({"JUPYTER_TOKEN": token}))
    tf(tmp_path, "init", "-input=false", env=env)
    try:
        t0 = time.monotonic()
        tf(tmp_path, "apply", "-auto-approve", "-input=false", env=env)
        applied = time.monotonic() - t0
        out = json.loads(tf(tmp_path, "output", "-json", env=env).stdout)["out"]["value"]
        assert out["instance_name"] == name
        assert out["status"] == "Running"
        assert (out["connect_address"], out["connect_port"]) == ("127.0.0.1", port)

        inst = lxd_client.instances.get(name)
        assert inst.config["user.tf-lxd-spawner.managed"] == "true"
        assert inst.devices["jupyter-server"]["listen"] == f"tcp:127.0.0.1:{port}"
        # The environment file the module wrote is root-only, and holds the token we passed.
        mode = inst.execute(["stat", "-c", "%a %U", "/etc/jupyterhub-singleuser/env.json"]).stdout.split()
        assert mode == ["600", "root"]
        env_file = json.loads(inst.files.get("/etc/jupyterhub-singleuser/env.json"))
        file_token = env_file["JUPYTER_TOKEN"]
        assert file_token == token

        url = f"http://127.0.0.1:{port}/api/status"
        deadline = time.monotonic() + 60
        while True:
            try:
                r = requests.get(url, headers={"Authorization": f"token {file_token}"}, timeout=2)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server never answered through the proxy device"
            time.sleep(0.1)
        first_answer = time.monotonic() - t0
        assert "started" in r.json()
        # Without the token the server refuses: the answer came from the authenticated server.
        assert requests.get(url, timeout=5).status_code in (401, 403)
        # The server runs as the module's user, as a systemd unit started at boot.
        ps = inst.execute(["systemctl", "show", "-p", "ActiveState", "jupyterhub-singleuser"]).stdout
        assert ps.strip() == "ActiveState=active"
        print(f"\nsmoke: apply {applied:.1f} s, apply start to first HTTP answer {first_answer:.1f} s")
    finally:
        tf(tmp_path, "destroy", "-auto-approve", "-input=false", env=env)
    assert not lxd_client.instances.exists(name)
    state = json.loads((tmp_path / "terraform.tfstate").read_text())
    assert state["resources"] == []
