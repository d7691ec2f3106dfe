"""Pinned module copies (modules.py): one copy per module content under <state_dir>/_modules/,
safe when spawns make it at once; the module source a rendered main.tf names, and pointing a
workspace whose module is gone at the current copy."""

import os
import re
import shutil
import threading

import pytest

from tf_lxd_spawner.homes import storage
from tf_lxd_spawner.systems import modules
from tf_lxd_spawner.systems.workspace import hcl_string, render_root

PROVIDER = {"refresh_interval": "250ms", "remote": None, "config_dir": None, "accept_remote_certificate": False}
#: An https endpoint: the provider block then has its own lines of quoted strings.
REMOTE_PROVIDER = {"refresh_interval": "1s", "config_dir": "/srv/state/.lxd-provider/lxd1_8443",
                   "accept_remote_certificate": True,
                   "remote": {"name": "tf-lxd", "scheme": "https", "address": "lxd1", "port": "8443"}}
INPUTS = ["name", "image", "listen_port", "server_environment"]


def _module(root, name="notebook"):
    src = root / name
    (src / "sub").mkdir(parents=True)
    (src / "main.tf").write_text('resource "lxd_instance" "this" {}\n')
    (src / "variables.tf").write_text('variable "name" {}\n')
    (src / "sub" / "nested.tf").write_text("# nested\n")
    (src / ".terraform" / "providers").mkdir(parents=True)
    (src / ".terraform" / "providers" / "junk").write_text("a provider binary\n")
    (src / ".terraform.lock.hcl").write_text("# lock\n")
    (src / "terraform.tfstate").write_text('{"resources": []}\n')
    (src / "terraform.tfstate.backup").write_text("{}\n")
    return src


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- pin ------------------------------------------------------------------------------------------

def test_a_local_module_is_copied_once_per_content(tmp_path):
    src, state_dir = _module(tmp_path / "pkg"), tmp_path / "state"
    pinned = modules.pin(state_dir, str(src))
    path = state_dir / modules.PINNED_DIR / os.path.basename(pinned)
    assert pinned == str(path) and re.fullmatch(r"notebook-[0-9a-f]{16}", path.name)
    assert _files(path) == ["main.tf", "sub", "sub/nested.tf", "variables.tf"]  # no Terraform leftovers
    assert (path / "sub" / "nested.tf").read_text() == "# nested\n"

    (path / "marker").write_text("the first copy")
    assert modules.pin(state_dir, str(src)) == pinned  # same content: same copy, not copied again
    assert (path / "marker").exists()
    assert os.listdir(path.parent) == [path.name]

    # What is not copied is not part of the content either
    (src / ".terraform" / "providers" / "junk").write_text("another provider binary\n")
    (src / "terraform.tfstate").write_text('{"resources": [{"type": "x"}]}\n')
    assert modules.pin(state_dir, str(src)) == pinned

    (src / "main.tf").write_text('resource "lxd_instance" "that" {}\n')
    changed = modules.pin(state_dir, str(src))
    assert changed != pinned and os.path.basename(changed).startswith("notebook-")
    assert (path / "main.tf").read_text() == 'resource "lxd_instance" "this" {}\n'  # the old copy stays
    assert open(os.path.join(changed, "main.tf")).read() == 'resource "lxd_instance" "that" {}\n'
    assert sorted(os.listdir(path.parent)) == sorted([path.name, os.path.basename(changed)])

    (src / "sub" / "nested.tf").rename(src / "sub" / "moved.tf")  # same bytes, another name
    assert modules.pin(state_dir, str(src)) not in (pinned, changed)


def test_the_copy_is_named_by_an_absolute_path_whatever_state_dir_is(tmp_path, monkeypatch):
    src = _module(tmp_path / "pkg")
    monkeypatch.chdir(tmp_path)
    pinned = modules.pin("state", str(src))
    assert os.path.isabs(pinned) and pinned.startswith(str(tmp_path / "state" / modules.PINNED_DIR) + os.sep)


def test_sources_that_are_not_local_directories_are_named_as_they_are(tmp_path, monkeypatch):
    _module(tmp_path / "pkg")
    (tmp_path / "file.tf").write_text("# a file\n")
    monkeypatch.chdir(tmp_path)
    state_dir = tmp_path / "state"
    for source in ["pkg/notebook", "./pkg/notebook", str(tmp_path / "file.tf"), str(tmp_path / "missing"),
                   "terraform-lxd/notebook/lxd", "git::https://example.org/m.git?ref=v1"]:
        assert modules.pin(state_dir, source) == source
    assert not state_dir.exists()


def test_spawns_pinning_the_same_module_at_once_get_one_copy_and_leave_no_scratch(tmp_path, monkeypatch):
    src, state_dir = _module(tmp_path / "pkg"), tmp_path / "state"
    threads = 8
    # Every caller copies before any of them renames its copy into place: all but one lose the race.
    all_copying = threading.Barrier(threads)
    copytree = shutil.copytree

    def copy_together(*args, **kwargs):
        result = copytree(*args, **kwargs)
        try:
            all_copying.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass  # a pin that copies one at a time is as good: it just does not race here
        return result

    monkeypatch.setattr(shutil, "copytree", copy_together)
    results, errors = [], []

    def spawn():
        try:
            results.append(modules.pin(state_dir, str(src)))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    workers = [threading.Thread(target=spawn) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors and len(results) == threads
    assert len(set(results)) == 1
    pinned = results[0]
    assert os.listdir(state_dir / modules.PINNED_DIR) == [os.path.basename(pinned)]  # no `.<name>.*` scratch
    assert _files(state_dir / modules.PINNED_DIR / os.path.basename(pinned)) == [
        "main.tf", "sub", "sub/nested.tf", "variables.tf"]
    assert not (state_dir / modules.PINNED_DIR / os.path.basename(pinned) / "module").exists()


# -- named_source ---------------------------------------------------------------------------------

@pytest.mark.parametrize("render", [
    lambda source, provider: render_root(source, INPUTS, provider),
    lambda source, provider: storage.render(source, ["name", "pool", "size"], provider),
], ids=["server root", "storage root"])
@pytest.mark.parametrize("provider", [PROVIDER, REMOTE_PROVIDER], ids=["unix", "https"])
def test_named_source_is_the_module_calls_not_the_providers(render, provider):
    main_tf = render("/srv/state/_modules/notebook-0123456789abcdef", provider)
    assert 'source = "terraform-lxd/lxd"' in main_tf  # the provider's source is there too
    assert modules.named_source(main_tf) == "/srv/state/_modules/notebook-0123456789abcdef"
    assert modules.named_source(render("terraform-lxd/notebook/lxd", provider)) == "terraform-lxd/notebook/lxd"


def test_named_source_reads_back_what_hcl_string_escaped():
    for source in ['/opt/my ${x} %{if} "q" \\b/é/m', "/a/$${x}/b", "/a/%%{y}/b"]:
        main_tf = render_root(source, INPUTS, PROVIDER)
        assert f"  source = {hcl_string(source)}\n" in main_tf and "${x}" not in main_tf.replace("$${", "")
        assert modules.named_source(main_tf) == source


def test_a_main_tf_without_a_module_call_names_none():
    assert modules.named_source("") is None
    provider_only = render_root("/m", INPUTS, PROVIDER).split('module "notebook"')[0]
    assert modules.named_source(provider_only) is None


# -- repoint --------------------------------------------------------------------------------------

def _workspace(tmp_path, source, provider=PROVIDER, render=None):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    text = (render or (lambda s, p: render_root(s, INPUTS, p)))(source, provider)
    (ws / "main.tf").write_text(text)
    return ws, text


@pytest.mark.parametrize("provider", [PROVIDER, REMOTE_PROVIDER], ids=["unix", "https"])
def test_a_workspace_naming_a_module_that_is_gone_is_pointed_at_the_current_one(tmp_path, provider):
    gone = str(tmp_path / "old-venv" / "site-packages" / "tf_lxd_spawner" / "modules" / "notebook")
    current = str(_module(tmp_path / "state" / "_modules", "notebook-0123456789abcdef"))
    ws, before = _workspace(tmp_path, gone, provider)
    old, text = modules.repoint(ws, current)
    assert old == gone
    assert (ws / "main.tf").read_text() == text
    assert modules.named_source(text) == current
    # Only the module's source changed: the whole file is what rendering it for `current` gives
    assert text == render_root(current, INPUTS, provider)
    assert text.count('source = "terraform-lxd/lxd"') == 1 and before.replace(hcl_string(gone), "") == \
        text.replace(hcl_string(current), "")
    assert modules.repoint(ws, current) is None  # once pointed, the module exists: nothing more to do


def test_a_storage_workspace_is_repointed_too(tmp_path):
    render = lambda s, p: storage.render(s, ["name", "pool", "size"], p)  # noqa: E731
    current = str(_module(tmp_path / "mods", "storage"))
    ws, _ = _workspace(tmp_path, "/gone/storage", REMOTE_PROVIDER, render)
    old, text = modules.repoint(ws, current)
    assert old == "/gone/storage" and text == render(current, REMOTE_PROVIDER)


@pytest.mark.parametrize("named", ["existing", "relative", "./relative", "terraform-lxd/notebook/lxd"])
def test_a_workspace_whose_module_is_there_or_not_a_path_is_left_alone(tmp_path, named):
    if named == "existing":
        named = str(_module(tmp_path / "pkg"))
    ws, before = _workspace(tmp_path, named)
    stat = (ws / "main.tf").stat()
    assert modules.repoint(ws, str(tmp_path / "current")) is None
    assert (ws / "main.tf").read_text() == before
    assert (ws / "main.tf").stat().st_mtime_ns == stat.st_mtime_ns and (ws / "main.tf").stat().st_ino == stat.st_ino


def test_nothing_to_repoint_without_a_main_tf_or_when_it_names_the_current_source(tmp_path):
    assert modules.repoint(tmp_path, "/m") is None
    ws, before = _workspace(tmp_path, "/gone/m")
    assert modules.repoint(ws, "/gone/m") is None and (ws / "main.tf").read_text() == before


def test_a_path_with_template_characters_is_repointed_and_read_back_as_it_is(tmp_path):
    gone = "/gone/${var.x}/%{if true}/notebook"
    current = str(_module(tmp_path / "st ${a}", "notebook-%{b}"))
    ws, before = _workspace(tmp_path, gone)
    assert "$${var.x}" in before and "%%{if true}" in before
    old, text = modules.repoint(ws, current)
    assert old == gone and modules.named_source(text) == current
    assert hcl_string(current) in text and "${a}" not in text.replace("$${a}", "")
    assert text == render_root(current, INPUTS, PROVIDER)
