"""The hub API through the hub's unix socket (hub_api_via) on LXD + terraform and Incus + tofu,
through a real JupyterHub: by default a container on the hub's host gets the socket's directory
(a disk device, no proxy device to start) and its server reaches the hub through the image's
relay; "proxy" keeps the bind=container proxy device; both run code; a hub restart brings the
relay back for the servers that run; a kept server made with the proxy device resumes with
the socket (the change of device is made in place, the container and its files stay)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import CACHE, IMAGE
from hubtools import Control, Hub, container_token, control_hook, shut_down, wait_for

pytestmark = pytest.mark.e2e

BINARY = {"lxd": "terraform", "incus": "tofu"}


@pytest.fixture(scope="module", params=list(BINARY))
def stack(request, tmp_path_factory):
    daemon = request.param
    client = request.getfixturevalue(f"{daemon}_client")
    work = tmp_path_factory.mktemp(f"relay-{daemon}")
    hub = Hub(work, f"""
c.LxdSpawner.backend = "{daemon}"
c.LxdSpawner.terraform_path = "{BINARY[daemon]}"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.storage_enabled = False
c.Spawner.http_timeout = 120
""" + control_hook(work / "control.json"), env={"PATH": f"{os.environ['PATH']}:{CACHE / 'bin'}"})
    control = Control(work / "control.json")
    hub.start()
    yield hub, client, control
    shut_down(hub, client)


def devices(client, name: str) -> dict:
    return client.instances.get(name).devices


def inputs(hub: Hub, user: str) -> dict:
    return json.loads((hub.state_dir / user / "_default" / "terraform.tfvars.json").read_text())


def test_socket_by_default_proxy_when_asked_both_reach_the_hub_also_after_a_restart(stack):
    hub, client, control = stack
    control.set("prox", hub_api_via="proxy")
    for user in ("sock", "prox"):  # side by side
        r = hub.start_server(user)
        assert r.status_code in (201, 202), r.text
    for user in ("sock", "prox"):
        hub.wait_ready(user)

    sock_dir = str(hub.state_dir / "_hub-api")
    assert inputs(hub, "sock")["hub_socket_dir"] == sock_dir and inputs(hub, "sock")["hub_address"] is None
    assert devices(client, "jupyter-sock")["jupyterhub-api"] == {
        "type": "disk", "source": sock_dir, "path": "/var/lib/tf-lxd-spawner/hub", "readonly": "true"}
    assert "hub_socket_dir" not in inputs(hub, "prox")
    api = devices(client, "jupyter-prox")["jupyterhub-api"]
    assert (api["type"], api["bind"]) == ("proxy", "container")
    env = json.loads(client.instances.get("jupyter-sock").files.get("/etc/jupyterhub-singleuser/env.json"))
    assert env["JUPYTERHUB_API_URL"].startswith("http://127.0.0.1:8081/")

    for user in ("sock", "prox"):
        assert hub.run_code(user, hub.user_token(user), "print(6 * 7)").strip() == "42"
    # The server itself talks to the hub through the relay: its token is valid at the hub.
    token = container_token(client, "jupyter-sock")
    assert hub.api("GET", "/user", token=token).json()["name"] == "sock"

    hub.stop()
    hub.start()
    # A new token: the server must ask the hub about it (it cannot be in its cache), through
    # the socket the restarted hub binds again for the servers it finds running.
    assert hub.run_code("sock", hub.user_token("sock"), "print(6 * 8)").strip() == "48"
    for user in ("sock", "prox"):
        hub.api("DELETE", f"/users/{user}/server")
    for user in ("sock", "prox"):
        hub.wait_stopped(user)
        wait_for(lambda: not client.instances.exists(f"jupyter-{user}"), what=f"jupyter-{user} to go")


def test_a_kept_server_made_with_the_proxy_device_resumes_with_the_socket(stack):
    hub, client, control = stack
    control.set("keeper", hub_api_via="proxy", remove=False)
    hub.start_server("keeper")
    hub.wait_ready("keeper")
    client.instances.get("jupyter-keeper").files.put("/root/mark.txt", b"kept")
    hub.api("DELETE", "/users/keeper/server")
    hub.wait_stopped("keeper")
    assert client.instances.get("jupyter-keeper").status == "Stopped"

    control.set("keeper", remove=False)  # hub_api_via back to its default: the socket
    r = hub.start_server("keeper")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("keeper")
    inst = client.instances.get("jupyter-keeper")
    assert inst.devices["jupyterhub-api"]["type"] == "disk"
    assert inst.files.get("/root/mark.txt") == b"kept"  # the same container, resumed
    assert hub.run_code("keeper", hub.user_token("keeper"), "print('resumed')").strip() == "resumed"
    hub.api("DELETE", "/users/keeper")  # delete_forever: the kept container goes
    wait_for(lambda: not client.instances.exists("jupyter-keeper"), what="the kept container to go")


def test_a_kept_server_from_an_image_without_the_relay_keeps_its_proxy_device(stack):
    """An instance made from an older image has no relay in its root file system, whatever the
    image is now: LXD copied the image's properties into its config (image.*) when it made it,
    and without that one the resume keeps the proxy device, and the server reaches the hub."""
    hub, client, control = stack
    control.set("elder", hub_api_via="proxy", remove=False)
    hub.start_server("elder")
    hub.wait_ready("elder")
    hub.api("DELETE", "/users/elder/server")
    hub.wait_stopped("elder")
    inst = client.instances.get("jupyter-elder")
    del inst.config["image.tf_lxd_spawner_hub_api_socket"]  # as if made from an image without the relay
    inst.save(wait=True)

    control.set("elder", remove=False)  # hub_api_via "auto", the image has the relay
    r = hub.start_server("elder")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("elder")
    assert client.instances.get("jupyter-elder").devices["jupyterhub-api"]["type"] == "proxy"
    assert hub.run_code("elder", hub.user_token("elder"), "print('still')").strip() == "still"
    hub.api("DELETE", "/users/elder")
    wait_for(lambda: not client.instances.exists("jupyter-elder"), what="the kept container to go")
