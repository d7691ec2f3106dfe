"""The modules' README inputs/outputs tables (notebook and storage) are generated
(setup/module_docs.py) and in sync, and the generator reads the HCL it meets correctly (checked on a
small module written here)."""

import importlib.util
import subprocess
import sys

import pytest
from conftest import MODULE_DIR, REPO, STORAGE_MODULE_DIR

SCRIPT = REPO / "setup" / "module_docs.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("module_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_module_readme_tables_are_in_sync():
    """`make module-docs` (the script without arguments) covers every module the repository ships."""
    gen = load_generator()
    assert gen.DEFAULT_MODULES == [MODULE_DIR, STORAGE_MODULE_DIR]
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# What the spawner relies on in each module (a parser that stopped early would miss these).
RELIED_ON = {
    MODULE_DIR: {"name", "image", "user", "files", "volumes", "labels", "instance_name", "status", "environment_file"},
    STORAGE_MODULE_DIR: {"name", "pool", "size", "config", "target", "labels", "location"},
}


@pytest.mark.parametrize("module", RELIED_ON, ids=lambda m: m.name)
def test_every_variable_and_output_is_in_the_readme(module):
    readme = (module / "README.md").read_text()
    docs = readme[readme.index("<!-- BEGIN_TF_DOCS -->"):readme.index("<!-- END_TF_DOCS -->")]
    gen = load_generator()
    names = [v.name for v in gen.variables(module)] + [o.name for o in gen.outputs(module)]
    assert RELIED_ON[module] <= set(names)
    for name in names:
        assert f"| `{name}` |" in docs
    r = subprocess.run([sys.executable, str(SCRIPT), "--check", str(module)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_check_names_every_stale_readme(tmp_path):
    """With several modules, --check looks at all of them and names each one out of date."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "variables.tf").write_text(VARIABLES_TF)
        (tmp_path / name / "README.md").write_text(README)
    r = subprocess.run([sys.executable, str(SCRIPT), "--check", str(tmp_path / "a"), str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert str(tmp_path / "a" / "README.md") in r.stderr and str(tmp_path / "b" / "README.md") in r.stderr


VARIABLES_TF = r'''
# A comment with a "quote" and a { brace
variable "name" {
  description = "Instance name: \"quoted\", a | pipe, a <key> and $${not_a_template}."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{1,3}}$", var.name)) # a } in a string and a comment
    error_message = "Bad name { here."
  }
}

/* A block comment
variable "commented_out" {} */

variable "files" {
  description = "Files."
  type = list(object({
    target_path = string                   // aligned, with a comment
    mode        = optional(string, "0644")
  }))
  default = [
    { target_path = "/etc/a  b", mode = "0600" },
  ]
}

variable "secret" {
  description = "A secret\nover two lines."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "anything" {
  default = null
}
'''

OUTPUTS_TF = '''
output "where" {
  description = "Where it \\\\ went."
  value       = "${var.name}-${jsonencode({ a = "}" })}"
}

output "token" {
  value     = var.secret
  sensitive = true
}
'''

MAIN_TF = '''
locals {
  script = <<-EOT
    variable "not_real" { }  # inside a heredoc, not a variable
    EOT
}
'''

README = "# tiny\n\nProse before.\n\n<!-- BEGIN_TF_DOCS -->\nstale\n<!-- END_TF_DOCS -->\n\nProse after.\n"


def test_generator_on_a_synthetic_module(tmp_path):
    (tmp_path / "variables.tf").write_text(VARIABLES_TF)
    (tmp_path / "outputs.tf").write_text(OUTPUTS_TF)
    (tmp_path / "main.tf").write_text(MAIN_TF)
    (tmp_path / "README.md").write_text(README)
    gen = load_generator()

    stale = subprocess.run([sys.executable, str(SCRIPT), "--check", str(tmp_path)], capture_output=True, text=True)
    assert stale.returncode == 1
    assert "make module-docs" in stale.stderr
    assert (tmp_path / "README.md").read_text() == README  # --check changes nothing

    assert gen.main([str(tmp_path)]) == 0
    assert gen.main(["--check", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# tiny\n\nProse before.\n\n<!-- BEGIN_TF_DOCS -->\n")
    assert readme.endswith("<!-- END_TF_DOCS -->\n\nProse after.\n")
    assert "stale" not in readme

    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    assert rows == [
        r'| `name` | Instance name: "quoted", a \| pipe, a &lt;key&gt; and ${not_a_template}. | `string` | n/a | yes |',
        '| `files` | Files. | `list(object({target_path = string, mode = optional(string, "0644")}))` '
        '| `[{"mode": "0600", "target_path": "/etc/a  b"}]` | no |',
        "| `secret` | A secret<br>over two lines. (sensitive) | `map(string)` | `{}` | no |",
        "| `anything` |  | `any` | `null` | no |",
        "| `where` | Where it \\ went. |",
        "| `token` | (sensitive) |",
    ]


def test_generator_refuses_a_readme_without_markers(tmp_path):
    (tmp_path / "variables.tf").write_text(VARIABLES_TF)
    (tmp_path / "README.md").write_text("# no markers\n")
    r = subprocess.run([sys.executable, str(SCRIPT), "--check", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "BEGIN_TF_DOCS" in r.stderr


def test_generator_refuses_hcl_it_cannot_read(tmp_path):
    (tmp_path / "variables.tf").write_text('variable "x" {\n  description = "unterminated\n}\n')
    (tmp_path / "README.md").write_text(README)
    r = subprocess.run([sys.executable, str(SCRIPT), "--check", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Unterminated template string" in r.stderr and "variables.tf:2" in r.stderr


def test_files_output_is_sensitive_wherever_it_is_passed_on():
    """The files output carries the operators' inline contents: sensitive in the module (its
    README says so), in the custom-module example that wraps it, and in the spawner's root,
    whose outputs Terraform would otherwise print into every run log."""
    import re

    from conftest import REPO

    from tf_lxd_spawner.systems.workspace import render_root

    gen = load_generator()
    for module in (MODULE_DIR, REPO / "examples" / "custom-module-gpu" / "module"):
        assert {o.name: o.sensitive for o in gen.outputs(module)}["files"], module
    docs = (MODULE_DIR / "README.md").read_text()
    assert re.search(r"^\| `files` \| [^\n]*\(sensitive\) \|$", docs, re.M)
    root = render_root(str(MODULE_DIR), ["name", "files"], {"refresh_interval": "250ms", "remote": None,
                                                             "config_dir": None, "accept_remote_certificate": False})
    block = re.search(r'^output "files" \{\n(.*?)^\}', root, re.M | re.S).group(1)
    assert re.search(r"^\s*sensitive\s*=\s*true$", block, re.M), block
