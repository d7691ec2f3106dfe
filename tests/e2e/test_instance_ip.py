"""connect_via = "instance-ip" through a real JupyterHub, on LXD and on Incus.

The test makes its own Linux bridge on 10.214.0.0/24 (the root namespace is 10.214.0.1;
nothing is routed beyond it) and gives each container a nic on it (module_variables' devices)
with a static address: the image has no DHCP client, and its systemd-networkd waits forever
for a udev that does not run in a container, so a pushed oneshot unit sets the address at
boot. Traffic between the hub and the server goes only between the root namespace and the
container's own network namespace, over that bridge.

What must hold: the server binds the container's own address (the hub's proxy routes to
http://<its 10.214.0.x>:8888 and code runs through it), there is no proxy device for the
server (the hub API reaches the container's loopback through the hub's unix socket, and the
server and the kernel use it), and stop removes the container. Everything the test made
(bridge, containers) goes at the end, also on failure.
"""

import json
import time

import pytest
from hubtools import Hub, shut_down
from netns import ip

pytestmark = pytest.mark.e2e

BRIDGE = "tfiipbr0"
SUBNET = "10.214.0"  # the bridge (root namespace) is .1
HOST_ADDRESS = f"{SUBNET}.1"
ADDRESS = {"lxd": f"{SUBNET}.20", "incus": f"{SUBNET}.30"}  # one user per hub: a static address each
USER = "iris-{daemon}"

ADDRESS_UNIT = """\
[Unit]
Description=Test address on the test's own bridge (tests/e2e/test_instance_ip.py)
DefaultDependencies=no
Before=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip addr add {address}/24 dev eth0
"""
WANTS = "[Unit]\nWants=tf-lxd-test-address.service\n"


def remove_bridge():
    ip("link", "delete", BRIDGE)


@pytest.fixture(scope="module")
def bridge():
    remove_bridge()  # a crashed earlier run's
    try:
        ip("link", "add", BRIDGE, "type", "bridge", check=True)
        ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE, check=True)
        ip("link", "set", BRIDGE, "up", check=True)
        yield BRIDGE
    finally:
        remove_bridge()


@pytest.fixture(scope="module", params=["lxd", "incus"])
def hub(request, bridge, tmp_path_factory, lxd_client, incus_client):
    daemon = request.param
    client = incus_client if daemon == "incus" else lxd_client
    work = tmp_path_factory.mktemp(f"instance-ip-{daemon}")
    (work / "address.service").write_text(ADDRESS_UNIT.format(address=ADDRESS[daemon]))
    (work / "wants.conf").write_text(WANTS)
    nic = {"eth0": {"type": "nic", "properties": {"nictype": "bridged", "parent": bridge, "name": "eth0"}}}
    hub = Hub(work, extra_config=f"""
        c.LxdSpawner.backend = "{daemon}"
        c.LxdSpawner.connect_via = "instance-ip"
        c.LxdSpawner.module_variables = {{"devices": {json.dumps(nic)}}}
        c.LxdSpawner.files_to_push = [
            ["{work}/address.service", "/etc/systemd/system/tf-lxd-test-address.service"],
            ["{work}/wants.conf", "/etc/systemd/system/multi-user.target.d/tf-lxd-test-address.conf"],
        ]
        # The test reads the proxy's routing table: where the hub sends the user's requests.
        c.JupyterHub.load_roles[0]["scopes"].append("proxy")
    """)
    hub.daemon, hub.client = daemon, client
    try:
        yield hub.start()
    finally:
        shut_down(hub, client)


@pytest.fixture(scope="module")
def hub_without_nic(tmp_path_factory, lxd_client):
    hub = Hub(tmp_path_factory.mktemp("instance-ip-no-nic"), extra_config="""
        c.LxdSpawner.connect_via = "instance-ip"
    """)
    try:
        yield hub.start()
    finally:
        shut_down(hub, lxd_client)


def test_instance_ip_without_a_nic_is_refused_before_anything_exists(hub_without_nic, lxd_client):
    hub = hub_without_nic
    before = {i.name for i in lxd_client.instances.all()}
    began = time.monotonic()
    r = hub.start_server("nonic")
    assert r.status_code in (201, 202, 400, 500), r.text
    deadline = time.monotonic() + 60
    while (model := hub.server_model("nonic")) and model.get("pending") and time.monotonic() < deadline:
        time.sleep(0.2)
    took = time.monotonic() - began
    assert not (hub.server_model("nonic") or {}).get("ready")
    log = hub.log_tail(200)
    assert 'connect_via = "instance-ip" needs a nic in the container' in log, log
    assert "c.LxdSpawner.lxd_profiles" in log
    assert took < 20, f"refused after {took:.1f} s"  # not after the provider's minutes of waiting
    assert not (hub.state_dir / "nonic").exists() or not any((hub.state_dir / "nonic").rglob("*.tfstate"))
    assert {i.name for i in lxd_client.instances.all()} - before == set()


def test_instance_ip_spawns_reaches_the_container_address_runs_code_and_stops(hub):
    daemon, client = hub.daemon, hub.client
    user = USER.format(daemon=daemon)
    address = ADDRESS[daemon]
    token = hub.user_token(user)
    began = time.monotonic()
    assert hub.start_server(user).status_code in (201, 202)
    hub.wait_ready(user)
    ready = time.monotonic() - began
    [audit] = hub.state_dir.glob("*/_default/audit.jsonl")
    start = json.loads(audit.read_text().splitlines()[-1])
    assert start["outcome"] == "ok", start
    assert start["url"] == f"http://{address}:8888", start  # the container's own address, not 127.0.0.1

    # The hub's proxy sends the user's requests to the container's address.
    routes = hub.api("GET", "/proxy").json()
    [target] = [r["target"] for prefix, r in routes.items() if prefix.startswith(f"/user/{user}/")]
    assert target == f"http://{address}:8888"

    # Code runs through that route; the kernel reaches the hub API on its container's loopback.
    code = ("import os, socket, urllib.request; api = os.environ['JUPYTERHUB_API_URL']; "
            "print(socket.gethostname(), api, urllib.request.urlopen(api).status)")
    hostname, api, status = hub.run_code(user, token, code).split()
    assert hostname == start["instance"]
    assert api.startswith("http://127.0.0.1:") and status == "200"

    # No proxy device at all: none for the server, and the hub API comes through the hub's
    # unix socket (hub_api_via = "auto" on the hub's own host; test_hub_api_relay has both).
    instance = client.instances.get(start["instance"])
    proxies = {n: d for n, d in instance.expanded_devices.items() if d["type"] == "proxy"}
    assert proxies == {} and instance.expanded_devices["jupyterhub-api"]["type"] == "disk", instance.expanded_devices
    # The server listens on the container's address (every address), not only on its loopback.
    listening = client.instances.get(start["instance"]).execute(["ss", "-Htln", "sport = :8888"]).stdout
    assert "0.0.0.0:8888" in listening, listening

    assert hub.api("DELETE", f"/users/{user}/server").status_code in (202, 204)
    hub.wait_stopped(user)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["operation"], r["outcome"]) for r in records] == [("start", "ok"), ("stop", "ok")]
    assert not client.instances.exists(start["instance"]), "stop must remove the container"
    stages = start.get("stages", {})
    print(f"\n{daemon}: spawn-to-ready {ready:.2f} s; stages " +
          ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
