"""The module is `terraform fmt` clean and valid, and ships inside the wheel."""

import subprocess
import sys
import zipfile

from conftest import MODULE_DIR, REPO, terraform_env


def test_module_fmt_and_validate(tmp_path):
    env = terraform_env(TF_DATA_DIR=str(tmp_path / "data"))
    subprocess.run(["terraform", "fmt", "-check", "-recursive", str(MODULE_DIR)], check=True, env=env)
    subprocess.run(["terraform", "init", "-backend=false", "-input=false"], cwd=MODULE_DIR, check=True,
                   env=env, capture_output=True)
    out = subprocess.run(["terraform", "validate", "-json"], cwd=MODULE_DIR, env=env, capture_output=True,
                         text=True)
    (MODULE_DIR / ".terraform.lock.hcl").unlink(missing_ok=True)
    assert '"valid": true' in out.stdout, out.stdout


def test_wheel_contains_module(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(REPO)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("versions.tf", "variables.tf", "main.tf", "outputs.tf", "README.md"):
        assert f"tf_lxd_spawner/modules/notebook/{f}" in names
    assert "tf_lxd_spawner/templates/main.tf.j2" in names
    assert any(n.endswith("entry_points.txt") for n in names)
