"""Every option of LxdSpawner is in the README's configuration table, with its help text: the
table is generated from the traits' help (setup/config_docs.py) and in sync, and that help says
what an option does, not what a benchmark measured."""

import importlib.util
import re
import sys

import pytest
from conftest import REPO
from jupyterhub.spawner import Spawner
from traitlets import Int, Unicode, default
from traitlets.config import LoggingConfigurable

from tf_lxd_spawner import LxdSpawner
from tf_lxd_spawner.settings import LxdSpawnerSettings

SCRIPT = REPO / "setup" / "config_docs.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_trait_documented():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", readme, re.M))
    own = {name for name, t in LxdSpawner.class_traits(config=True).items()
           if name not in Spawner.class_traits(config=True)}
    assert own, "no traits found"
    assert own - documented == set()
    for name in own:
        assert LxdSpawner.class_traits()[name].help.strip(), name


def test_configuration_table_is_generated_and_in_sync():
    """The table is the traits' help, in settings.py's order: `make config-docs` writes it."""
    gen = load_generator()
    readme = (REPO / "README.md").read_text()
    assert readme.count(gen.BEGIN) == 1 and readme.count(gen.END) == 1
    assert gen.main(["--check"]) == 0, (
        "README.md's configuration table differs from the help of the traits in "
        "tf_lxd_spawner/settings.py: run make config-docs")
    # Every option of LxdSpawner beyond Spawner's is one of LxdSpawnerSettings' own.
    own = {name for name in LxdSpawner.class_traits(config=True) if name not in Spawner.class_traits(config=True)}
    assert own == {name for name, _ in gen.config_traits()}


def _own_help() -> dict[str, str]:
    return {name: " ".join(t.help.split()) for name, t in LxdSpawnerSettings.class_own_traits(config=True).items()}


# A figure some run measured ("0.4 s", "20 MB", "1.5 GiB"): a behaviour's own numbers are whole
# (a 30 s clean stop, 250 ms between tries), measurements are not.
MEASURED = re.compile(r"\b\d+\.\d+ ?(s|ms|MB|MiB|GB|GiB|CPU-s)\b")


@pytest.mark.parametrize("name", sorted(_own_help()))
def test_help_says_what_an_option_does_not_what_was_measured(name):
    """Benchmark figures go to docs/ (the help then says "Numbers: docs/<page>.md")."""
    text = _own_help()[name]
    for word in ("measured", "benchmark", "lab notes"):
        assert word not in text.lower(), f"{name}'s help reports a measurement ({word!r}): move it to docs/"
    assert not MEASURED.search(text), f"{name}'s help holds a measured figure {MEASURED.search(text).group(0)!r}"
    for page in re.findall(r"Numbers: (docs/[\w./-]+\.md)", text):
        assert (REPO / page).is_file(), f"{name}'s help points at {page}, which does not exist"


class _Sample(LoggingConfigurable):
    plain = Unicode("a|b", help="Pipes | and <keys> & `code <kept>` stay readable.").tag(config=True)
    computed = Unicode(help="Computed when it runs.").tag(config=True)
    not_config = Int(3, help="Not an option.")

    @default("computed")
    def _default_computed(self):
        return "x"


def test_generator_on_a_sample_class():
    gen = load_generator()
    with pytest.raises(gen.DocsError, match="computed.*DYNAMIC_DEFAULTS"):
        gen.render(_Sample)
    gen.DYNAMIC_DEFAULTS["computed"] = "worked out at run time"
    try:
        rows = [line for line in gen.render(_Sample).splitlines() if line.startswith("| `")]
    finally:
        del gen.DYNAMIC_DEFAULTS["computed"]
    assert rows == [
        r'| `plain` | `"a\|b"` | Pipes \| and &lt;keys&gt; &amp; `code <kept>` stay readable. |',
        "| `computed` | worked out at run time | Computed when it runs. |",
    ]
    assert gen.python_code((1, "x")) == '(1, "x")' and gen.python_code({"k": [None]}) == '{"k": [None]}'


def test_generator_refuses_a_readme_without_markers(tmp_path):
    gen = load_generator()
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert gen.main(["--check", str(readme)]) == 2
    readme.write_text(f"Prose.\n\n{gen.BEGIN}\nstale\n{gen.END}\n\nAfter.\n")
    assert gen.main(["--check", str(readme)]) == 1
    assert "stale" in readme.read_text()  # --check changes nothing
    assert gen.main([str(readme)]) == 0 and gen.main(["--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"Prose.\n\n{gen.BEGIN}\n") and text.endswith(f"{gen.END}\n\nAfter.\n")


def test_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "tf-lxd"]
    assert ep.load() is LxdSpawner
