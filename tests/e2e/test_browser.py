"""The demo (`make demo`) driven by headless Chromium as a user would: log in, choose an image on
the spawn page, watch the Terraform stages on the progress page, land in JupyterLab, run a cell
in a new notebook, stop the server from the hub's control panel. Screenshots of each step go to
.cache/test-output/browser/ (git-ignored), so a person can see what the user saw."""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import CACHE, IMAGE, REPO
from hubtools import Hub, second_alias, shut_down
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

USER = "webvisitor"  # container names are global to the daemon: one no other test uses
INSTANCE = f"jupyter-{USER}"
OUTPUT = CACHE / "test-output" / "browser"
SPAWN_TIMEOUT = 240  # a spawn takes 15-60 s on a busy 2-core machine
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(p)),
                "/usr/bin/chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver (setup/debian-packages.sh)


def demo_config() -> Path:
    """The config `make demo` runs (it may live in examples/demo/ or directly in examples/)."""
    for path in (REPO / "examples" / "demo" / "jupyterhub_config.py", REPO / "examples" / "jupyterhub_config.py"):
        if path.is_file():
            return path
    raise AssertionError("no demo config under examples/")


class DemoHub(Hub):
    """The demo's own configuration, loaded as it is; only what would clash with a running demo
    or another test (ports, database, state) is moved into this test's directory, and a second
    image is offered so the spawn page has a choice to make."""

    def __init__(self, workdir: Path, images: dict[str, str]):
        self.images = images
        super().__init__(workdir, env={
            # What the Makefile exports to `make demo`.
            "PATH": f"{os.environ['PATH']}:{CACHE / 'bin'}",
            "TF_CLI_CONFIG_FILE": str(CACHE / "terraform" / "cli.tfrc"),
        })

    def _config(self, extra: str) -> str:
        return textwrap.dedent(f"""
            c = get_config()  # noqa
            load_subconfig({str(demo_config())!r})
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_port = {self.hub_port}
            c.JupyterHub.db_url = "sqlite:///{self.workdir}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.ConfigurableHTTPProxy.pid_file = "{self.workdir}/proxy.pid"
            c.LxdSpawner.state_dir = "{self.state_dir}"
            # The choice the spawn page offers: KubeSpawner-style profiles, one with a choice
            # of image (the second image is the audit record's way to tell what was chosen).
            c.LxdSpawner.profile_list = [
                {{"display_name": "Small", "default": True, "kubespawner_override": {{"mem_limit": "1G"}}}},
                {{"display_name": "Large", "slug": "large", "kubespawner_override": {{"mem_limit": "2G"}},
                  "profile_options": {{"image": {{"display_name": "Image", "choices": {{
                      name.split()[-1].strip("()"): {{"display_name": name, "kubespawner_override": {{"image": image}}}}
                      for name, image in {self.images!r}.items()}}}}}}}},
            ]
            # The test's own API client, to check what the browser did.
            c.JupyterHub.services = [{{"name": "tester", "api_token": "{self.token}"}}]
            c.JupyterHub.load_roles = [{{"name": "tester", "services": ["tester"],
                "scopes": ["admin:users", "admin:servers", "read:users"]}}]
            # Show the progress page at once rather than after 10 s, so a fast spawn is seen too.
            c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
            # The machine running the tests may be far busier than a demo's: the server in a
            # container with a 10 % CPU share may need more than the demo's 90 s to answer.
            c.Spawner.http_timeout = {SPAWN_TIMEOUT - 30}
            c.Spawner.start_timeout = {SPAWN_TIMEOUT}
        """)


@pytest.fixture(scope="module")
def demo_client(incus_client):
    """The daemon the demo runs on (examples/demo: Incus, unless DEMO_BACKEND says otherwise)."""
    return incus_client


@pytest.fixture(scope="module")
def second_image(demo_client):
    """A second alias of the notebook image: a choice the audit record can tell apart."""
    with second_alias(demo_client, f"tf-lxd-browser-{uuid.uuid4().hex[:8]}") as alias:
        yield alias


@pytest.fixture(scope="module")
def hub(tmp_path_factory, demo_client, second_image):
    images = {"Jupyter notebook": IMAGE, "Jupyter notebook (second image)": second_image}
    hub = DemoHub(tmp_path_factory.mktemp("browser-hub"), images).start()
    yield hub
    shut_down(hub, demo_client)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Chromium that reaches loopback only: no proxy, no update or sync traffic, and
    every host name but 127.0.0.1 resolves to nothing."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # selenium and chromium talk to loopback directly
    net_log = tmp_path / "netlog.json"  # every connection the browser made, read after it quits
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    quiet = ("Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,NetworkTimeServiceQuerying,"
             "PreconnectToSearch")  # Chromium's own services that would call out
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--no-default-browser-check", "--disable-default-apps",
                 "--disable-extensions", "--disable-domain-reliability", "--disable-breakpad",
                 "--disable-client-side-phishing-detection", f"--disable-features={quiet}",
                 "--metrics-recording-only", "--password-store=basic",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--log-net-log={net_log}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"credentials_enable_service": False,  # no password checks
                                           "profile.password_manager_leak_detection": False})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.net_log = net_log
    try:
        yield driver
    finally:
        if driver.session_id:
            driver.quit()


def network_use(driver) -> dict[str, set[str]]:
    """Quit the browser (which completes its net log), then read from the log what reached the
    network: the addresses of TCP connections, of UDP sockets that sent bytes, the names it asked
    DNS for, and, for information, the hosts of requests that went nowhere (Chromium's own
    services, which the host resolver rules answer with "not found")."""
    driver.quit()
    driver.session_id = None
    log = json.loads(driver.net_log.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    tcp, udp_to, udp_sending, dns, requested = set(), {}, set(), set(), set()
    for event in log["events"]:
        kind, params, source = names[event["type"]], event.get("params") or {}, event["source"]["id"]
        if kind in ("TCP_CONNECT_ATTEMPT", "TCP_CONNECT") and "address" in params:
            tcp.add(params["address"].rsplit(":", 1)[0])
        elif kind == "UDP_CONNECT" and "address" in params:
            udp_to[source] = params["address"].rsplit(":", 1)[0]
        elif kind in ("UDP_BYTES_SENT", "UDP_SEND_ERROR"):
            udp_sending.add(source)
        elif kind in ("DNS_TRANSACTION", "HOST_RESOLVER_SYSTEM_TASK", "HOST_RESOLVER_DNS_TASK"):
            dns.add(params.get("hostname") or params.get("host") or "?")
        elif kind == "URL_REQUEST_START_JOB" and "url" in params:
            requested.add(urlsplit(params["url"]).hostname)
    return {"tcp": tcp, "udp": {udp_to.get(s, "?") for s in udp_sending}, "dns": dns,
            "unanswered": requested - {"127.0.0.1"}}


def screenshot(driver, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


# A page redrawing part of itself, or covering it for a moment.
REDRAWN = (NoSuchElementException, StaleElementReferenceException, ElementNotInteractableException,
           ElementClickInterceptedException)


def until(driver, condition, what: str, timeout: float = 60):
    """WebDriverWait that says which step did not happen, where the browser was, and keeps a
    screenshot of what it showed (failure.png)."""
    try:
        return WebDriverWait(driver, timeout, ignored_exceptions=REDRAWN).until(condition)
    except TimeoutException:
        screenshot(driver, "failure.png")
        raise AssertionError(f"{what}: not within {timeout} s; the browser is at {driver.current_url}") from None


def click(driver, css: str, what: str, timeout: float = 60):
    """Click an element found afresh, again if the page redrew it meanwhile (JupyterLab redraws
    parts of itself while it loads and while the kernel connects)."""
    def clicked(d):
        d.find_element(By.CSS_SELECTOR, css).click()
        return True
    until(driver, clicked, what, timeout)


def log_in(driver, hub):
    driver.get(f"{hub.url}/hub/login")
    until(driver, EC.visibility_of_element_located((By.ID, "username_input")), "login form").send_keys(USER)
    driver.find_element(By.ID, "password_input").send_keys(os.environ.get("DEMO_PASSWORD", "demo"))
    driver.find_element(By.ID, "login_submit").click()


def choose_second_image(driver, shot: str = "spawn-form.png") -> str:
    """The spawn page's options form (the user lands there after logging in): the profile
    "Large", its second image, and start."""
    small = until(driver, EC.visibility_of_element_located((By.ID, "profile-small")), "the profiles")
    assert small.is_selected()  # the default profile
    driver.find_element(By.ID, "profile-large").click()
    select = Select(driver.find_element(By.ID, "profile-option-large--image"))
    names = [o.text for o in select.options]
    assert len(names) == 2, names
    assert select.first_selected_option.text == names[0]
    select.select_by_index(1)
    screenshot(driver, shot)
    driver.find_element(By.CSS_SELECTOR, "#spawn_form button[type=submit]").click()
    return names[1]


PROGRESS_JS = """
const bar = document.getElementById('progress-bar');
if (!bar) return {url: location.href};
return {url: location.href, value: bar.getAttribute('aria-valuenow'), width: bar.style.width,
        failed: bar.classList.contains('bg-danger'),
        log: Array.from(document.querySelectorAll('#progress-log .progress-log-event')).map(e => e.textContent)};
"""


def watch_progress(driver, hub) -> tuple[list[int], list[str], Path | None]:
    """Follow the progress page until it hands over to the server; return the bar's values,
    the event log's messages and the screenshot taken mid-way."""
    values, messages, shot, opened = [], [], None, False
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            state = driver.execute_script(PROGRESS_JS)
        except WebDriverException:  # the page is being replaced
            time.sleep(0.2)
            continue
        if state["url"].startswith(f"{hub.url}/user/{USER}/"):
            return values, messages, shot
        if "value" in state:
            if not opened:  # the user opens the event log to see the stages
                driver.find_element(By.CSS_SELECTOR, "#progress-details summary").click()
                opened = True
            value = int(state["value"] or 0)
            if value and (not values or values[-1] != value):
                values.append(value)
                assert state["width"] == f"{value}%", state  # the bar is drawn as wide as it says
            messages.extend(state["log"][len(messages):])
            assert not state["failed"], f"the spawn failed: {messages}"
            if shot is None and 30 <= value < 88 and any(m.startswith("Applying") for m in messages):
                shot = screenshot(driver, "progress.png")
        time.sleep(0.2)
    raise AssertionError(f"no JupyterLab after {SPAWN_TIMEOUT} s; progress {values}, messages {messages}")


NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
FIRST_CELL = f'{NOTEBOOK} .jp-Cell[data-windowed-list-index="0"]'


def run_cell_in_new_notebook(driver, code: str) -> tuple[str, str]:
    """Launcher's Python 3 notebook card, type into the first cell, Shift+Enter; the cell's
    prompt and output."""
    click(driver, '.jp-LauncherCard[data-category="Notebook"]', "the launcher's notebook card", 120)
    # The kernel indicator says "idle" before there is a kernel too (then initializing,
    # connecting, idle): wait until the server has the kernel's websocket, then for idle.
    until(driver, kernel_connected, "the kernel's websocket", 120)
    until(driver, EC.presence_of_element_located(
        (By.CSS_SELECTOR, f'{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status="idle"]')), "an idle kernel", 120)
    click(driver, f"{FIRST_CELL} .cm-content", "a notebook's cell")
    ActionChains(driver).send_keys(code).perform()
    until(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"{FIRST_CELL} .cm-content").text == code,
          "the code in the cell")
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    until(driver, lambda d: re.fullmatch(r"\[\d+\]:", prompt_of_first_cell(d)), "the cell's prompt number", 120)
    output = until(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"{FIRST_CELL} .jp-OutputArea-output").text,
                   "the cell's output", 60)
    return prompt_of_first_cell(driver), output


KERNELS_JS = """
const done = arguments[arguments.length - 1];
const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
fetch(location.pathname.replace(/\\/lab(\\/.*)?$/, '/api/kernels'), {headers: {'X-XSRFToken': xsrf}})
  .then(r => r.json()).then(done, () => done([]));
"""


def kernel_connected(driver) -> bool:
    """Whether the user's server (asked from the page, as JupyterLab asks it: the user's cookie
    and XSRF token) has a kernel with its websocket connected."""
    kernels = driver.execute_async_script(KERNELS_JS)
    assert isinstance(kernels, list), kernels  # e.g. {"message": "Forbidden"}
    return any(k.get("connections", 0) >= 1 for k in kernels)


def prompt_of_first_cell(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"{FIRST_CELL} .jp-InputPrompt").text.strip()


def stop_from_control_panel(driver, hub):
    driver.get(f"{hub.url}/hub/home")
    # The button is drawn before the page's script binds its click handler: on a busy machine a
    # click can land in between and do nothing; the user would click again, so does the test.
    for attempt in range(3):
        until(driver, EC.element_to_be_clickable((By.ID, "stop")), "the Stop My Server button").click()
        try:
            WebDriverWait(driver, 20).until(lambda d: hub.server_model(USER) is None
                                            or (hub.server_model(USER) or {}).get("pending") == "stop")
            break
        except TimeoutException:
            driver.get(f"{hub.url}/hub/home")
    until(driver, EC.text_to_be_present_in_element((By.ID, "start"), "Start My Server"), "the Start button", 120)
    assert not driver.find_element(By.ID, "stop").is_displayed()
    screenshot(driver, "stopped.png")


def assert_screenshot(path: Path):
    assert path is not None and path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 10_000, (path, path.stat().st_size)


def test_user_spawns_works_and_stops_in_the_browser(hub, browser, demo_client, second_image):
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)  # only this run's screenshots
    started = time.monotonic()
    log_in(browser, hub)
    chosen = choose_second_image(browser)
    assert chosen == "Jupyter notebook (second image)"

    values, messages, progress_png = watch_progress(browser, hub)
    print(f"progress: {values}\nmessages:\n  " + "\n  ".join(messages))
    assert len({v for v in values if 0 < v < 100}) >= 3, values  # the bar moved through stages
    expected = ["Initialising Terraform", f"Applying the notebook module for {INSTANCE}", f"Creating instance {INSTANCE}"]
    if values[-1] >= 88:  # the page was seen that far: the page samples every 0.2 s, and the last
        expected.append("Waiting for the server at http://")  # events and the hand-over can come in one burst
    for text in expected:
        assert any(m.startswith(text) for m in messages), (text, messages)

    until(browser, EC.url_contains(f"/user/{USER}/lab"), "JupyterLab's address", 120)
    until(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, ".jp-LauncherCard")), "JupyterLab's launcher",
          120)
    assert browser.find_element(By.ID, "jp-main-dock-panel").is_displayed()
    lab_png = screenshot(browser, "jupyterlab.png")
    print(f"JupyterLab after {time.monotonic() - started:.1f} s")

    # The server runs in the container made from the second image (the first's files under a
    # second alias: the audit record tells which was chosen).
    ws = hub.state_dir / USER / "_default"
    record = json.loads((ws / "audit.jsonl").read_text().splitlines()[-1])
    assert (record["operation"], record["outcome"], record["image"]) == ("start", "ok", second_image), record
    assert record["profile"] == "large", record
    assert record["instance"] == INSTANCE
    inst = demo_client.instances.get(INSTANCE)
    assert inst.status == "Running"
    assert inst.config["user.tf-lxd-spawner.workspace"].startswith(str(hub.state_dir))
    assert inst.config["volatile.base_image"] == demo_client.images.get_by_alias(second_image).fingerprint

    prompt, output = run_cell_in_new_notebook(browser, "print(6*7)")
    assert (prompt, output.strip()) == ("[1]:", "42"), (prompt, output)
    notebook_png = screenshot(browser, "notebook.png")

    stop_from_control_panel(browser, hub)
    hub.wait_stopped(USER, timeout=120)
    assert hub.api("GET", f"/users/{USER}").json()["servers"] == {}
    assert not demo_client.instances.exists(INSTANCE)
    records = [json.loads(line) for line in (ws / "audit.jsonl").read_text().splitlines()]
    assert [(r["operation"], r["outcome"]) for r in records] == [("start", "ok"), ("stop", "ok")]
    print(f"whole flow: {time.monotonic() - started:.1f} s")

    for path in (progress_png, lab_png, notebook_png):
        assert_screenshot(path)
    used = network_use(browser)
    print(f"browser's network use: {used}")
    assert used["tcp"] == {"127.0.0.1"}, used  # loopback only
    assert used["udp"] <= {"127.0.0.1"} and not used["dns"], used


def test_stop_button_during_a_spawn_leaves_nothing_and_the_server_starts_again(hub, browser, demo_client):
    """JupyterHub 6's pending page has a Stop button: pressed while Terraform applies, the spawn
    is stopped, nothing of it stays, and the next start works at once."""
    user = "webstopper"
    instance = f"jupyter-{user}"
    browser.get(f"{hub.url}/hub/login")
    until(browser, EC.visibility_of_element_located((By.ID, "username_input")), "login form").send_keys(user)
    browser.find_element(By.ID, "password_input").send_keys(os.environ.get("DEMO_PASSWORD", "demo"))
    browser.find_element(By.ID, "login_submit").click()
    choose_second_image(browser, "stop-form.png")
    until(browser, lambda d: any(m.startswith("Applying") for m in d.execute_script(PROGRESS_JS).get("log", [])
                                 or []) or "Applying" in d.page_source, "the apply on the progress page", 120)
    click(browser, "#stop-server-btn", "the pending page's Stop Server button")
    # The button's own confirmation, or the page it reloads into (the hub's "Server not running").
    until(browser, lambda d: any(text in d.find_element(By.TAG_NAME, "body").text
                                 for text in ("Server stopped", "Server not running")),
          "the Stop button's confirmation", 120)
    screenshot(browser, "stopped-while-pending.png")
    hub.wait_stopped(user, timeout=120)
    deadline = time.monotonic() + 120
    while demo_client.instances.exists(instance) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not demo_client.instances.exists(instance), "the stopped spawn's instance is gone"
    # At once, again: this time it runs.
    r = hub.api("POST", f"/users/{user}/server", json={"profile": "small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, timeout=SPAWN_TIMEOUT)
    assert demo_client.instances.get(instance).status == "Running"
    records = [json.loads(line) for line in (hub.state_dir / user / "_default" / "audit.jsonl").read_text().splitlines()]
    assert (records[-1]["operation"], records[-1]["outcome"]) == ("start", "ok"), records
    assert records[0]["operation"] == "start" and records[0]["outcome"] != "ok", records  # the stopped one
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204)
    hub.wait_stopped(user)
    assert not demo_client.instances.exists(instance)
