"""The modules' own tests (terraform/modules/{notebook,storage}/tests/*.tftest.hcl) pass under
`terraform test` and `tofu test` against the real LXD, and leave no container or volume behind.

Each binary runs on its own copy of the module (so no .terraform/ or lock file lands in the repo),
with its own instance or volume name and proxy port, both at once: each run takes a while."""

import re
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import CACHE, MODULE_DIR, STORAGE_MODULE_DIR, free_port, terraform_env
from hubtools import delete_volumes

pytestmark = pytest.mark.e2e

BINARIES = {"terraform": "terraform", "tofu": str(CACHE / "bin" / "tofu")}
TEST_FILES = sorted(p.name for p in (MODULE_DIR / "tests").glob("*.tftest.hcl"))
STORAGE_TEST_FILES = sorted(p.name for p in (STORAGE_MODULE_DIR / "tests").glob("*.tftest.hcl"))


def expected_runs(module=MODULE_DIR) -> int:
    """Every run block in the module's test files: all must pass, none may be skipped."""
    return sum(len(re.findall(r'^run "', p.read_text(), re.M)) for p in (module / "tests").glob("*.tftest.hcl"))


def module_test(binary: str, workdir, name: str, port: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """init + test in workdir; the instance or volume name (and the port) reach the test files as TF_VAR_*."""
    env = terraform_env(TF_VAR_name=name, **({} if port is None else {"TF_VAR_listen_port": str(port)}))
    t0 = time.monotonic()
    init = subprocess.run([binary, "init", "-input=false", "-no-color"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    if init.returncode:
        return init, time.monotonic() - t0
    test = subprocess.run([binary, "test", "-no-color"], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=900)
    return test, time.monotonic() - t0


def distinct_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def run_with_both_binaries(module_dir, tmp_path, names: dict, ports: dict | None = None) -> dict:
    """init + test of a copy of module_dir per binary (so no .terraform/ or lock file lands in
    the repo), both at once; {binary: (result, seconds)}."""
    workdirs = {}
    for b in BINARIES:
        workdirs[b] = tmp_path / b / module_dir.name
        shutil.copytree(module_dir, workdirs[b],
                        ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"))
    with ThreadPoolExecutor(len(BINARIES)) as pool:
        futures = {b: pool.submit(module_test, path, workdirs[b], names[b], ports[b] if ports else None)
                   for b, path in BINARIES.items()}
        return {b: f.result() for b, f in futures.items()}


def delete_custom_volumes(client, names) -> list[str]:
    """Deletes the custom volumes of these names (snapshots first); returns the names that existed."""
    return [v.split("/", 1)[1] for v in delete_volumes(client, names=set(names))]


def test_module_tftest_with_terraform_and_tofu(tmp_path, lxd_client):
    assert TEST_FILES == ["notebook.tftest.hcl", "validation.tftest.hcl"]
    run_id = uuid.uuid4().hex[:8]
    names = {b: f"tftest-{b}-{run_id}" for b in BINARIES}
    ports = dict(zip(BINARIES, distinct_ports(len(BINARIES))))
    try:
        results = run_with_both_binaries(MODULE_DIR, tmp_path, names, ports)
    finally:
        left = [n for n in names.values() if lxd_client.instances.exists(n)]
        for n in left:  # clean up for the next run, then fail below
            inst = lxd_client.instances.get(n)
            if inst.status != "Stopped":
                inst.stop(force=True, wait=True)
            inst.delete(wait=True)
        # The volume the notebook test mounts (tests/volume names it after the instance).
        left_volumes = delete_custom_volumes(lxd_client, {f"{n}-vol" for n in names.values()})
    assert left == [], f"terraform test left containers behind: {left}"
    assert left_volumes == [], f"terraform test left volumes behind: {left_volumes}"

    runs = expected_runs()
    for b, (r, seconds) in results.items():
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"{b} test failed:\n{out[-6000:]}"
        assert f"Success! {runs} passed, 0 failed." in out, out[-3000:]
        for f in TEST_FILES:
            assert f"tests/{f}... pass" in out, out[-3000:]
        # The apply and the look inside the container happened (not only plans).
        assert 'run "create"... pass' in out and 'run "inspect"... pass' in out
        print(f"\n{b} test: {runs} runs passed in {seconds:.1f} s (init included)")


def test_storage_module_tftest_with_terraform_and_tofu(tmp_path, lxd_client):
    """The storage module's tests: a volume with a quota, grown in place, and every validation."""
    assert STORAGE_TEST_FILES == ["storage.tftest.hcl", "validation.tftest.hcl"]
    run_id = uuid.uuid4().hex[:8]
    names = {b: f"tftest-home-{b}-{run_id}" for b in BINARIES}
    try:
        results = run_with_both_binaries(STORAGE_MODULE_DIR, tmp_path, names)
    finally:
        left = delete_custom_volumes(lxd_client, set(names.values()))  # for the next run; fail below
    assert left == [], f"terraform test left volumes behind: {left}"

    runs = expected_runs(STORAGE_MODULE_DIR)
    for b, (r, seconds) in results.items():
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"{b} test failed:\n{out[-6000:]}"
        assert f"Success! {runs} passed, 0 failed." in out, out[-3000:]
        for f in STORAGE_TEST_FILES:
            assert f"tests/{f}... pass" in out, out[-3000:]
        # The volume was created, looked at, grown in place and looked at again (not only plans).
        for run in ("create", "inspect_created", "grow", "inspect_grown"):
            assert f'run "{run}"... pass' in out, out[-3000:]
        print(f"\n{b} storage test: {runs} runs passed in {seconds:.1f} s (init included)")
