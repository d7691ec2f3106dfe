"""The notebook module's own tests (terraform/modules/notebook/tests/*.tftest.hcl) pass under
`terraform test` and `tofu test` against the real LXD, and leave no container behind.

Each binary runs on its own copy of the module (so no .terraform/ or lock file lands in the repo),
with its own instance name and proxy port, both at once: each run takes a while."""

import re
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import CACHE, MODULE_DIR, free_port, terraform_env

pytestmark = pytest.mark.e2e

BINARIES = {"terraform": "terraform", "tofu": str(CACHE / "bin" / "tofu")}
TEST_FILES = sorted(p.name for p in (MODULE_DIR / "tests").glob("*.tftest.hcl"))


def expected_runs() -> int:
    """Every run block in the test files: all must pass, none may be skipped."""
    return sum(len(re.findall(r'^run "', (MODULE_DIR / "tests" / f).read_text(), re.M)) for f in TEST_FILES)


def module_test(binary: str, workdir, name: str, port: int) -> tuple[subprocess.CompletedProcess, float]:
    """init + test in workdir; the instance name and port reach the test files as TF_VAR_*."""
    env = terraform_env(TF_VAR_name=name, TF_VAR_listen_port=str(port))
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


def test_module_tftest_with_terraform_and_tofu(tmp_path, lxd_client):
    assert TEST_FILES == ["notebook.tftest.hcl", "validation.tftest.hcl"]
    run_id = uuid.uuid4().hex[:8]
    names = {b: f"tftest-{b}-{run_id}" for b in BINARIES}
    ports = dict(zip(BINARIES, distinct_ports(len(BINARIES))))
    workdirs = {}
    for b in BINARIES:
        workdirs[b] = tmp_path / b / "notebook"
        shutil.copytree(MODULE_DIR, workdirs[b],
                        ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"))
    try:
        with ThreadPoolExecutor(len(BINARIES)) as pool:
            futures = {b: pool.submit(module_test, path, workdirs[b], names[b], ports[b])
                       for b, path in BINARIES.items()}
            results = {b: f.result() for b, f in futures.items()}
    finally:
        left = [n for n in names.values() if lxd_client.instances.exists(n)]
        for n in left:  # clean up for the next run, then fail below
            inst = lxd_client.instances.get(n)
            if inst.status != "Stopped":
                inst.stop(force=True, wait=True)
            inst.delete(wait=True)
    assert left == [], f"terraform test left containers behind: {left}"

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
