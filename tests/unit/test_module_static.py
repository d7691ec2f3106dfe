"""The modules (notebook, storage) are `terraform fmt` clean and valid, and ship inside the wheel."""

import subprocess
import sys
import zipfile

import pytest
from conftest import MODULE_DIR, REPO, STORAGE_MODULE_DIR, terraform_env


@pytest.mark.parametrize("module", [MODULE_DIR, STORAGE_MODULE_DIR], ids=lambda m: m.name)
def test_module_fmt_and_validate(tmp_path, module):
    env = terraform_env(TF_DATA_DIR=str(tmp_path / "data"))
    subprocess.run(["terraform", "fmt", "-check", "-recursive", str(module)], check=True, env=env)
    subprocess.run(["terraform", "init", "-backend=false", "-input=false"], cwd=module, check=True,
                   env=env, capture_output=True)
    out = subprocess.run(["terraform", "validate", "-json"], cwd=module, env=env, capture_output=True,
                         text=True)
    (module / ".terraform.lock.hcl").unlink(missing_ok=True)
    assert '"valid": true' in out.stdout, out.stdout


def test_wheel_contains_module(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(REPO)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("notebook", "storage"):
        for f in ("versions.tf", "variables.tf", "main.tf", "outputs.tf", "README.md"):
            assert f"tf_lxd_spawner/modules/{module}/{f}" in names
    assert "tf_lxd_spawner/templates/main.tf.j2" in names
    assert any(n.endswith("entry_points.txt") for n in names)
