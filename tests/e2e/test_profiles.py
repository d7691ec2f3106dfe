"""What operators offer their users, through a real JupyterHub 6 on Incus + OpenTofu:
KubeSpawner-style profile_list chosen through the REST API and the spawn form, refusals (HTTP
400, nothing made), profiles limited to groups, group_overrides reaching module_variables and
the limits, the profile in the audit and the metrics, the Stop button's request during a spawn
(nothing left, a start again at once), and the rename of a stopped named server (workspace,
audit trail and per-server volume follow it).

One hub; independent scenarios run side by side.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import CACHE, IMAGE
from hubtools import Hub, second_alias, shut_down, wait_for

pytestmark = pytest.mark.e2e

ALIAS = "tf-lxd-profiles-alias"  # a second image name, chosen by a profile option

PROFILES = f"""
c.LxdSpawner.profile_list = [
    {{"display_name": "Small", "description": "half a CPU, 512 MiB", "default": True,
      "kubespawner_override": {{"cpu_limit": 0.5, "mem_limit": "512M"}}}},
    {{"display_name": "Large <fast>", "slug": "large",
      "kubespawner_override": {{"cpu_limit": 1.5, "mem_limit": "1G"}},
      "profile_options": {{"image": {{"display_name": "Image", "choices": {{
          "standard": {{"display_name": "Standard", "default": True,
                        "kubespawner_override": {{"image": "{IMAGE}"}}}},
          "second": {{"display_name": "Second", "kubespawner_override": {{"image": "{ALIAS}"}}}}}},
          "unlisted_choice": {{"enabled": True, "display_name": "Other image",
                               "validation_regex": "^[a-z][a-z0-9-]*$",
                               "validation_message": "an image alias: lower-case letters, digits and '-'",
                               "kubespawner_override": {{"image": "{{value}}"}}}}}}}}}},
    {{"display_name": "GPU (stand-in)", "slug": "gpu", "groups": ["gpu-users"],
      "spawner_override": {{"module_variables": {{"config": {{"user.profile-note": "gpu"}}}}}}}},
]
c.JupyterHub.load_groups = {{"gpu-users": {{"users": ["insider"]}}, "big": {{"users": ["grouped"]}}}}
c.Spawner.group_overrides = {{"01-big": {{"groups": ["big"], "spawner_override": {{
    "mem_limit": "768M", "module_variables": {{"config": {{"user.course": "big-data"}}}}}}}}}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, incus_client):
    client = incus_client
    work = tmp_path_factory.mktemp("profiles")
    hub = Hub(work, f"""
c.JupyterHub.allow_named_servers = True
c.LxdSpawner.backend = "incus"
c.LxdSpawner.terraform_path = "tofu"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.storage_capacity = "100MiB"
c.LxdSpawner.storage_name_template = "home-{{username}}-{{servername}}"
c.Spawner.http_timeout = 200
c.Spawner.start_timeout = 240
""" + PROFILES, env={"PATH": f"{os.environ['PATH']}:{CACHE / 'bin'}"})
    with second_alias(client, ALIAS):
        hub.start()
        try:
            yield client, hub
        finally:
            shut_down(hub, client)


def records(hub, user, server="_default") -> list[dict]:
    path = hub.state_dir / user / server / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def spawn(hub, user, server="", options=None):
    r = hub.start_server(user, server, options)
    assert r.status_code in (201, 202), r.text
    return hub.wait_ready(user, server, timeout=300)


def stop(hub, user, server=""):
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    assert hub.api("DELETE", path).status_code in (202, 204)
    hub.wait_stopped(user, server)


def refused(hub, user, options) -> str:
    """A start the spawner refuses: HTTP 400 with the reason, no workspace, no instance."""
    since = hub.log_path.stat().st_size
    r = hub.start_server(user, "", options)
    if r.status_code in (201, 202):  # answered before the spawn ended: its last event says why
        try:
            events = hub.progress_events(user)
        except requests.HTTPError as e:
            # The refusal came before the progress request: the hub answers 400 "not starting"
            # once it has dropped the failed spawn, and only its log still has the message.
            assert e.response.status_code == 400, e
            events = []
        hub.wait_stopped(user)
        if events:
            assert events[-1].get("failed"), events
            message = events[-1]["message"]
        else:
            log = hub.log_path.read_bytes()[since:].decode(errors="replace")
            found = re.findall(rf"Not starting {user}'s server\s*: (.*)", log)
            assert found, f"no refusal of {user} in the hub's log:\n{log[-3000:]}"
            message = found[-1]
    else:
        assert r.status_code == 400, (r.status_code, r.text)
        message = r.json()["message"]
    assert not (hub.state_dir / user).exists(), "a refused start makes no workspace"
    return message


def chooser(hub, client):
    """Through the REST API: the profile's limits and an option's image; the audit and the
    metrics name the profile."""
    user = "chooser"
    spawn(hub, user, options={"profile": "large", "image": "second"})
    inst = client.instances.get(f"jupyter-{user}")
    assert inst.config["limits.memory"] == str(1024**3)
    assert inst.config["limits.cpu.allowance"] == "150ms/100ms"
    assert inst.config["volatile.base_image"] == client.images.get_by_alias(ALIAS).fingerprint
    start = [r for r in records(hub, user) if r["operation"] == "start"][-1]
    assert (start["profile"], start["image"], start["outcome"]) == ("large", ALIAS, "ok"), start
    samples = hub.metrics()
    assert any(name == "tf_lxd_spawner_spawn_duration_seconds_count" and dict(labels).get("profile") == "large"
               and value >= 1 for (name, labels), value in samples.items()), "no spawn metric for profile large"
    stop(hub, user)
    # The next start chooses Small: what Large set (its limits, the option's image) is undone.
    # (A start with no options at all reuses the last ones: JupyterHub's own rule.)
    spawn(hub, user, options={"profile": "small"})
    inst = client.instances.get(f"jupyter-{user}")
    assert inst.config["limits.memory"] == str(512 * 1024**2)
    assert inst.config["volatile.base_image"] == client.images.get_by_alias(IMAGE).fingerprint
    stop(hub, user)


def refusals(hub, client):
    user = "refused"
    assert "profile 'huge' does not exist" in refused(hub, user, {"profile": "huge"})
    assert "option 'image' of profile 'large' has no choice 'python2'" in refused(
        hub, user, {"profile": "large", "image": "python2"})
    message = refused(hub, user, {"profile": "large", "image--unlisted-choice": "Not An Image"})
    assert "'Not An Image' is refused: an image alias" in message, message
    assert "profile 'gpu' is not available to you" in refused(hub, user, {"profile": "gpu"})
    # A valid unlisted value that names no image: refused too, naming it, nothing made.
    message = refused(hub, user, {"profile": "large", "image--unlisted-choice": "no-such-image"})
    assert "image 'no-such-image' does not exist" in message, message


def groups(hub, client):
    """A profile limited to a group: in the form and usable for its members only;
    group_overrides reach module_variables and the limits."""
    outsider_form = form_of(hub, "outsider")
    assert 'value="large"' in outsider_form and "GPU" not in outsider_form
    assert "Large &lt;fast&gt;" in outsider_form  # escaped
    assert 'value="gpu"' in form_of(hub, "insider")
    spawn(hub, "insider", options={"profile": "gpu"})
    inst = client.instances.get("jupyter-insider")
    assert inst.config["user.profile-note"] == "gpu"
    stop(hub, "insider")
    spawn(hub, "grouped")
    inst = client.instances.get("jupyter-grouped")
    # group_overrides set 768M, then the default profile (Small) sets 512M: later layers win.
    assert inst.config["limits.memory"] == str(512 * 1024**2)
    assert inst.config["user.course"] == "big-data"
    stop(hub, "grouped")


def logged_in(hub, user) -> requests.Session:
    """A browser's session without JavaScript: the login form (DummyAuthenticator), cookies."""
    session = requests.Session()
    page = session.get(f"{hub.url}/hub/login", timeout=30)
    r = session.post(f"{hub.url}/hub/login", data={"username": user, "password": "any",
                                                   "_xsrf": xsrf_of(page.text, session)},
                     allow_redirects=False, timeout=30)
    assert r.status_code == 302, (r.status_code, r.text[:300])
    return session


def xsrf_of(html: str, session) -> str:
    found = re.search(r'name="_xsrf" value="([^"]+)"', html)
    return found.group(1) if found else session.cookies.get("_xsrf", "")


def form_of(hub, user) -> str:
    r = logged_in(hub, user).get(f"{hub.url}/hub/spawn/{user}", timeout=30)
    assert r.status_code == 200, r.status_code
    assert 'name="profile"' in r.text, r.text[:2000]
    return r.text


def form_post(hub, client):
    """The form, submitted as a browser without JavaScript would: the chosen profile's fields
    are read, the last choice is pre-selected next time."""
    user = "former"
    session = logged_in(hub, user)
    page = session.get(f"{hub.url}/hub/spawn/{user}", timeout=30)
    data = {"profile": "large", "profile-option-large--image": "unlisted_choice",
            "profile-option-large--image--unlisted-choice": ALIAS,
            "profile-option-small--ignored": "x", "_xsrf": xsrf_of(page.text, session)}
    r = session.post(f"{hub.url}/hub/spawn/{user}", data=data, allow_redirects=False, timeout=60)
    assert r.status_code in (200, 302, 303), (r.status_code, r.text[:500])
    hub.wait_ready(user, timeout=300)
    start = [r for r in records(hub, user) if r["operation"] == "start"][-1]
    assert (start["profile"], start["image"]) == ("large", ALIAS), start
    stop(hub, user)
    form = session.get(f"{hub.url}/hub/spawn/{user}", timeout=30).text
    assert re.search(r'id="profile-large" value="large"\s+checked', form), "the last profile is pre-selected"
    assert f'value="{ALIAS}"' in form


def stop_during_spawn(hub, client):
    """The pending page's Stop button sends DELETE while the spawn runs: nothing is left (no
    instance, no port, no lock) and the server starts again at once."""
    user = "impatient"
    r = hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    ws = hub.state_dir / user / "_default"
    wait_for(lambda: any(p.name.endswith("-apply.jsonl") for p in (ws / "logs").glob("*")), 120, "the apply")
    assert hub.api("DELETE", f"/users/{user}/server").status_code in (202, 204)
    hub.wait_stopped(user)
    wait_for(lambda: not client.instances.exists(f"jupyter-{user}"), 120, "the instance to go")
    spawn(hub, user)  # at once: the clean-up holds the workspace, the new start waits its turn
    assert client.instances.get(f"jupyter-{user}").status == "Running"
    outcomes = [(r["operation"], r["outcome"]) for r in records(hub, user)]
    assert outcomes[-1] == ("start", "ok"), outcomes
    # The stopped spawn's own clean-up recorded it (not a later recovery of what it left).
    assert outcomes[0] == ("start", "failed") and "recover" not in [o for o, _ in outcomes], outcomes
    first = records(hub, user)[0]
    assert "cancelled" in first["error"], first
    stop(hub, user)


def rename(hub, client):
    """JupyterHub 6's rename of a stopped named server: the workspace and its audit trail move,
    the per-server home volume stays the server's; a running one is refused by the hub."""
    user = "renamer"
    token = hub.user_token(user)
    spawn(hub, user, "old")
    code = "import os\nopen(os.path.expanduser('~/kept.txt'), 'w').write('mine')\nprint('ok')"
    assert hub.run_code(user, token, code, server="old").strip() == "ok"
    r = hub.api("PATCH", f"/users/{user}/servers/old", json={"name": "new"})
    assert r.status_code == 400 and "is active" in r.text, r.text  # running: the hub refuses
    stop(hub, user, "old")
    r = hub.api("PATCH", f"/users/{user}/servers/old", json={"name": "new"})
    assert r.status_code in (200, 204), r.text
    assert not (hub.state_dir / user / "old").exists()
    moved = records(hub, user, "new")
    assert [(x["operation"], x["outcome"]) for x in moved][-1] == ("rename", "ok")
    assert [x["operation"] for x in moved][:2] == ["start", "stop"]  # the trail came along
    spawn(hub, user, "new")
    read = "import os\nprint(open(os.path.expanduser('~/kept.txt')).read())"
    assert hub.run_code(user, token, read, server="new").strip() == "mine"
    start = [x for x in records(hub, user, "new") if x["operation"] == "start"][-1]
    assert start["volume"] == "home-renamer-old", start  # the server's own volume, by its record
    stop(hub, user, "new")


def test_profiles_groups_and_jupyterhub6_server_api(stack):
    client, hub = stack
    scenarios = [chooser, refusals, groups, form_post, stop_during_spawn, rename]
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {s.__name__: pool.submit(s, hub, client) for s in scenarios}
        errors = {}
        for name, f in futures.items():
            try:
                f.result()
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"[:3000]
    assert not errors, json.dumps(errors, indent=1)[:9000]
    leftovers = [i.name for i in client.instances.all()
                 if i.config.get("user.tf-lxd-spawner.workspace", "").startswith(str(hub.state_dir))]
    assert leftovers == [], leftovers
