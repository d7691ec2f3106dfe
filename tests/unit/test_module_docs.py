"""The module README's inputs/outputs tables are generated (setup/module_docs.py) and in sync, and
the generator reads the HCL it meets correctly (checked on a small module written here)."""

import importlib.util
import subprocess
import sys

from conftest import MODULE_DIR, REPO

SCRIPT = REPO / "setup" / "module_docs.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("module_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_module_readme_tables_are_in_sync():
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_variable_and_output_is_in_the_readme():
    readme = (MODULE_DIR / "README.md").read_text()
    docs = readme[readme.index("<!-- BEGIN_TF_DOCS -->"):readme.index("<!-- END_TF_DOCS -->")]
    gen = load_generator()
    names = [v.name for v in gen.variables(MODULE_DIR)] + [o.name for o in gen.outputs(MODULE_DIR)]
    # What the spawner relies on is among them (a parser that stopped early would miss these).
    assert {"name", "image", "user", "files", "labels", "instance_name", "status", "environment_file"} <= set(names)
    for name in names:
        assert f"| `{name}` |" in docs


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
