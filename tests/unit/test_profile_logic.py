"""profile_list in KubeSpawner's shape: reading it, choosing from it, the form and the overrides."""

from __future__ import annotations

import asyncio
import html.parser
import json
from types import SimpleNamespace

import pytest
from traitlets import Any, Callable, Dict, Unicode, Union
from traitlets.config import Configurable

from tf_lxd_spawner.lifecycle import profiles
from tf_lxd_spawner.lifecycle.settings_values import ConfigError
from tf_lxd_spawner.spawner import LxdSpawner

# As copied from a zero-to-jupyterhub values file (kubespawner_override, a dict-less list).
Z2JH = [
    {"display_name": "Small", "description": "1 CPU, 1 GiB", "default": True,
     "kubespawner_override": {"cpu_limit": 1, "mem_limit": "1G"}},
    {"display_name": "Large & fast", "description": "<b>4 CPUs</b>",
     "kubespawner_override": {"cpu_limit": 4, "mem_limit": "8G"},
     "profile_options": {
         "image": {"display_name": "Image", "choices": {
             "lab": {"display_name": "JupyterLab", "default": True, "kubespawner_override": {"image": "lab"}},
             "r": {"display_name": "R", "kubespawner_override": {"image": "r-notebook"}}},
             "unlisted_choice": {"enabled": True, "display_name": "Other image",
                                 "validation_regex": "^[a-z][a-z0-9-]*$",
                                 "validation_message": "lower-case letters, digits and '-'",
                                 "kubespawner_override": {"image": "{value}"}}}}},
    {"display_name": "GPU", "slug": "gpu", "groups": ["gpu-users"],
     "spawner_override": {"allowed_members": ["m2"], "module_variables": {"gpu": True}}},
]


def test_slugs_defaults_and_both_override_names():
    ps = profiles.normalize(Z2JH)
    assert [p.slug for p in ps] == ["small", "large-fast", "gpu"]
    assert profiles.default_profile(ps).slug == "small"
    assert ps[0].override == {"cpu_limit": 1, "mem_limit": "1G"}
    assert ps[2].override["allowed_members"] == ["m2"]
    as_dict = profiles.normalize({"tiny": {"display_name": "Tiny"}})
    assert as_dict[0].slug == "tiny"


@pytest.mark.parametrize("raw, message", [
    ([{"display_name": "A"}, {"display_name": "a"}], "slug 'a' is used by two profiles"),
    ([{"display_name": "A", "default": True}, {"display_name": "B", "default": True}], "more than one profile"),
    ([{"display_name": "A", "spawner_override": {}, "kubespawner_override": {}}], "has both"),
    ([{"display_name": "A", "profile_options": {"x": {"choices": {}}}}], "nothing could be chosen"),
    ([{"display_name": "A", "profile_options": {"x": {"unlisted_choice": {"enabled": True,
                                                                           "validation_regex": "("}}}}],
     "is not a regular expression"),
    ("small", "must be a list or a dict"),
])
def test_unworkable_profile_lists_are_refused_naming_the_place(raw, message):
    with pytest.raises(ConfigError, match=message):
        profiles.normalize(raw)


def test_choices_defaults_and_refusals_name_option_and_value():
    ps = profiles.normalize(Z2JH)
    assert profiles.select(ps, {}, []).profile.slug == "small"
    sel = profiles.select(ps, {"profile": "large-fast"}, [])
    assert sel.values == {"image": "lab"}
    assert [dict(o) for o in sel.overrides] == [{"cpu_limit": 4, "mem_limit": "8G"}, {"image": "lab"}]
    sel = profiles.select(ps, {"profile": "large-fast", "image": "unlisted_choice",
                               "image--unlisted-choice": "my-image"}, [])
    assert sel.values == {"image": "my-image"} and sel.overrides[-1] == {"image": "my-image"}
    for options, message in [
        ({"profile": "huge"}, "profile 'huge' does not exist"),
        ({"profile": "large-fast", "image": "python2"}, "option 'image' of profile 'large-fast' has no choice 'python2'"),
        ({"profile": "large-fast", "image--unlisted-choice": "Bad Image!"},
         "'Bad Image!' is refused: lower-case letters"),
        ({"profile": "large-fast", "image--unlisted-choice": "x\nrm"}, "is refused"),  # whole value matched
        ({"profile": "gpu"}, "not available to you"),
        ({"profile": 5}, "must be a profile's slug"),
        ({"profile": "large-fast", "image": ["r"]}, "must be a string"),
    ]:
        with pytest.raises(ConfigError, match=message):
            profiles.select(ps, options, [])
    assert profiles.select(ps, {"profile": "gpu"}, ["gpu-users"]).profile.slug == "gpu"
    no_unlisted = profiles.normalize([{"display_name": "A", "profile_options": {
        "size": {"choices": {"s": {"display_name": "S"}}}}}])
    with pytest.raises(ConfigError, match="takes no value of your own"):
        profiles.select(no_unlisted, {"size--unlisted-choice": "xl"}, [])


def test_unlisted_value_fills_only_the_value_placeholder():
    ps = profiles.normalize([{"display_name": "A", "profile_options": {"img": {"unlisted_choice": {
        "enabled": True, "spawner_override": {"image": "{value}", "module_variables": {"tag": "x-{value}-{other}"}}}}}}])
    sel = profiles.select(ps, {"img--unlisted-choice": "{value}{0}"}, [])
    assert sel.overrides[-1] == {"image": "{value}{0}", "module_variables": {"tag": "x-{value}{0}-{other}"}}


def _spawner(**traits):
    user = SimpleNamespace(name="ann", url="/user/ann/", escaped_name="ann", state=None,
                           groups=[SimpleNamespace(name="gpu-users")])
    hub = SimpleNamespace(api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/", public_host="",
                          url="http://127.0.0.1:8081/hub/")
    return LxdSpawner(user=user, hub=hub, orm_spawner=SimpleNamespace(name="", server=None, state=None),
                      **traits)


def test_overrides_apply_in_order_merge_module_variables_and_are_undone_next_start():
    sp = _spawner(profile_list=Z2JH, image="base", module_variables={"mine": 1}, mem_limit="2G")
    asyncio.run(sp.apply_profile({"profile": "large-fast", "image": "r"}))
    assert (sp.profile, sp.image, sp.cpu_limit, sp.mem_limit) == ("large-fast", "r-notebook", 4, 8 * 1024**3)
    asyncio.run(sp.apply_profile({"profile": "gpu"}))
    assert sp.image == "base" and sp.cpu_limit is None and sp.mem_limit == 2 * 1024**3  # large-fast undone
    assert sp.module_variables == {"mine": 1, "gpu": True} and sp.allowed_members == ["m2"]
    sp.clear_state()  # as the hub does after a stop and before a start
    assert sp.module_variables == {"mine": 1} and sp.allowed_members == []


def test_module_variables_merge_into_a_callable():
    async def mine(spawner):
        return {"mine": spawner.user.name}

    sp = _spawner(profile_list=Z2JH, module_variables=mine)
    asyncio.run(sp.apply_profile({"profile": "gpu"}))
    assert asyncio.run(sp.module_variables(sp)) == {"mine": "ann", "gpu": True}


def test_an_override_of_no_setting_is_refused():
    sp = _spawner(profile_list=[{"display_name": "K8s", "kubespawner_override": {"node_selector": {"gpu": "1"}}}])
    with pytest.raises(ConfigError, match="overrides 'node_selector', which is not a setting of LxdSpawner"):
        asyncio.run(sp.apply_profile({}))


def test_callable_profile_list_may_be_async():
    async def offer(spawner):
        return [{"display_name": f"For {spawner.user.name}", "spawner_override": {"image": "x"}}]

    sp = _spawner(profile_list=offer)
    asyncio.run(sp.apply_profile({}))
    assert (sp.profile, sp.image) == ("for-ann", "x")


class _Fields(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.checked, self.selected, self.names, self.text = [], [], set(), []
        self.inputs = {}  # text field name -> value
        self._select = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "name" in a:
            self.names.add(a["name"])
        if tag == "input" and a.get("type") == "radio" and "checked" in a:
            self.checked.append(a["value"])
        if tag == "input" and a.get("type") == "text":
            self.inputs[a["name"]] = a.get("value")
        if tag == "select":
            self._select = a["name"]
        if tag == "option" and "selected" in a:
            self.selected.append((self._select, a["value"]))

    def handle_data(self, data):
        self.text.append(data)


def test_form_is_escaped_hides_other_groups_and_preselects_the_last_choice():
    ps = profiles.normalize(Z2JH)
    form = profiles.render_form(profiles.offered(ps, []), {"profile": "large-fast", "image": "r"})
    parsed = _Fields()
    parsed.feed(form)
    assert "<b>4 CPUs</b>" not in form and "&lt;b&gt;4 CPUs&lt;/b&gt;" in form
    assert "GPU" not in "".join(parsed.text)  # limited to a group this user is not in
    assert parsed.checked == ["large-fast"]
    assert ("profile-option-large-fast--image", "r") in parsed.selected
    form = profiles.render_form(profiles.offered(ps, []), {"profile": "large-fast",
                                                            "image--unlisted-choice": "my-image"})
    assert 'value="my-image"' in form
    assert profiles.render_form(profiles.offered(ps, ["gpu-users"]), None).count('type="radio"') == 3
    assert profiles.render_form(profiles.normalize([{"display_name": "Only"}]), None) == ""


def test_form_fields_become_the_api_shape():
    formdata = {"profile": ["large-fast"], "profile-option-large-fast--image": ["unlisted_choice"],
                "profile-option-large-fast--image--unlisted-choice": [" my-image "],
                "profile-option-small--whatever": ["x"]}
    assert profiles.from_form(formdata) == {"profile": "large-fast", "image": "unlisted-choice",
                                            "image--unlisted-choice": "my-image"}
    assert profiles.from_form({}) == {}


def test_dict_overrides_merge_into_the_operators_and_are_undone():
    base_storage = {"snapshots.schedule": "@daily", "snapshots.expiry": "2w"}
    base_env = {"LANG": "C.UTF-8", "TZ": "UTC"}
    base_vars = {"limits": {"cpu": "1", "memory": "1GB"}, "keep": 1}
    profile_list = [{"display_name": "Big", "spawner_override": {
        "storage_config": {"snapshots.expiry": "4w"}, "environment": {"GPU": "1", "TZ": None},
        "module_variables": {"limits": {"cpu": "4", "memory": None}, "extra": {}}, "lxd_profiles": ["gpu"]},
        "profile_options": {"tool": {"choices": {"jax": {"display_name": "JAX", "spawner_override": {
            "environment": {"TOOL": "jax"}}}}}}}]
    as_configured = json.dumps(profile_list)
    sp = _spawner(profile_list=profile_list, storage_config=base_storage, environment=base_env,
                  module_variables=base_vars, lxd_profiles=["default"])
    asyncio.run(sp.apply_profile({}))
    assert sp.storage_config == {"snapshots.schedule": "@daily", "snapshots.expiry": "4w"}
    assert sp.environment == {"LANG": "C.UTF-8", "GPU": "1", "TOOL": "jax"}  # both layers; None deletes
    assert sp.module_variables == {"limits": {"cpu": "4"}, "keep": 1}  # nested merge; an empty dict adds nothing
    assert sp.lxd_profiles == ["gpu"]  # not a dict: replaced
    sp.storage_config["snapshots.expiry"] = "changed in place"
    sp.module_variables["limits"]["cpu"] = "changed in place"
    assert base_storage == {"snapshots.schedule": "@daily", "snapshots.expiry": "2w"}
    assert base_env == {"LANG": "C.UTF-8", "TZ": "UTC"}
    assert base_vars == {"limits": {"cpu": "1", "memory": "1GB"}, "keep": 1}
    assert json.dumps(profile_list) == as_configured
    sp.clear_state()
    assert (sp.storage_config, sp.environment, sp.module_variables, sp.lxd_profiles) == (
        base_storage, base_env, base_vars, ["default"])
    asyncio.run(sp.apply_profile({}))  # the next start merges into the originals again
    assert sp.storage_config == {"snapshots.schedule": "@daily", "snapshots.expiry": "4w"}


def test_module_variables_merge_recursively_into_a_callable():
    async def mine(spawner):
        return {"mine": spawner.user.name, "limits": {"cpu": 1, "memory": 2}}

    sp = _spawner(profile_list=[{"display_name": "P", "spawner_override": {
        "module_variables": {"limits": {"memory": None, "gpus": 1}}}}], module_variables=mine)
    asyncio.run(sp.apply_profile({}))
    assert asyncio.run(sp.module_variables(sp)) == {"mine": "ann", "limits": {"cpu": 1, "gpus": 1}}
    sp.clear_state()
    assert sp.module_variables is mine


def test_kubespawners_unlisted_sentinel_is_accepted_and_the_text_wins():
    ps = profiles.normalize(Z2JH)
    for sentinel in ("unlisted-choice", "unlisted_choice"):
        sel = profiles.select(ps, {"profile": "large-fast", "image": sentinel, "image--unlisted-choice": "mine"}, [])
        assert sel.values == {"image": "mine"} and sel.overrides[-1] == {"image": "mine"}
        with pytest.raises(ConfigError, match="needs a value of your own"):
            profiles.select(ps, {"profile": "large-fast", "image": sentinel}, [])
    sel = profiles.select(ps, {"profile": "large-fast", "image": "r", "image--unlisted-choice": "mine"}, [])
    assert sel.values == {"image": "mine"}  # KubeSpawner's rule: the text wins whenever given
    assert profiles.select(ps, {"profile": "large-fast", "image": "r", "image--unlisted-choice": ""},
                           []).values == {"image": "r"}
    # The form emits KubeSpawner's value and reads both.
    form = profiles.render_form(profiles.offered(ps, []), {"profile": "large-fast", "image": "unlisted-choice",
                                                            "image--unlisted-choice": "mine"})
    parsed = _Fields()
    parsed.feed(form)
    assert ("profile-option-large-fast--image", "unlisted-choice") in parsed.selected
    assert parsed.inputs["profile-option-large-fast--image--unlisted-choice"] == "mine"
    assert "unlisted_choice" not in form
    field = "profile-option-large-fast--image"
    for sentinel in ("unlisted-choice", "unlisted_choice"):
        assert profiles.from_form({"profile": ["large-fast"], field: [sentinel],
                                   field + "--unlisted-choice": ["mine"]}) == {
            "profile": "large-fast", "image": "unlisted-choice", "image--unlisted-choice": "mine"}
    assert profiles.from_form({"profile": ["large-fast"], field + "--unlisted-choice": ["unlisted_choice"]}) == {
        "profile": "large-fast", "image--unlisted-choice": "unlisted_choice"}  # the user's text is theirs
    # Without JavaScript the text field is sent too, still holding the last text: the select decides.
    assert profiles.from_form({"profile": ["large-fast"], field: ["r"], field + "--unlisted-choice": ["mine"]}) == {
        "profile": "large-fast", "image": "r"}
    # KubeSpawner's own form removes the select's name when its free text is used.
    assert profiles.from_form({"profile": ["large-fast"], field + "--unlisted-choice": ["mine"]}) == {
        "profile": "large-fast", "image--unlisted-choice": "mine"}
    with pytest.raises(ConfigError, match="cannot be a choice's slug"):
        profiles.normalize([{"display_name": "A", "profile_options": {"x": {"choices": {
            "unlisted-choice": {"display_name": "X"}}}}}])


def pick_first(spawner, members):
    return members[0]


def uid_gid(spawner):
    return 1000, 1000


def test_an_override_may_be_a_callable_for_a_setting_that_takes_one():
    sp = _spawner(profile_list=[{"display_name": "P", "spawner_override": {
        "placement": pick_first, "get_uid_gid": uid_gid, "image": lambda spawner: f"img-{spawner.user.name}"}}])
    assert (sp.placement, sp.get_uid_gid, sp.image) == ("least-loaded", None, "jupyter-notebook")
    asyncio.run(sp.apply_profile({}))  # once a 500: pick_first was called with the spawner alone
    assert (sp.placement, sp.get_uid_gid, sp.image) == (pick_first, uid_gid, "img-ann")
    assert set(profiles.applied_values(sp, sp._profile_saved)) == {"image"}  # callables cannot be kept
    sp.clear_state()
    assert (sp.placement, sp.get_uid_gid, sp.image) == ("least-loaded", None, "jupyter-notebook")


def test_an_option_with_only_an_unlisted_choice_starts_empty():
    ps = profiles.normalize([{"display_name": "A", "profile_options": {"img": {"unlisted_choice": {
        "enabled": True, "display_name": "Image", "spawner_override": {"image": "{value}"}}}}}])
    field = "profile-option-a--img--unlisted-choice"
    for last in (None, {"profile": "a"}, {"profile": "a", "img": "unlisted-choice"}):
        parsed = _Fields()
        parsed.feed(profiles.render_form(ps, last))
        assert parsed.inputs == {field: ""}, last
    parsed = _Fields()
    parsed.feed(profiles.render_form(ps, {"profile": "a", "img--unlisted-choice": "mine"}))
    assert parsed.inputs == {field: "mine"}
    with pytest.raises(ConfigError, match="needs a value of your own"):
        profiles.select(ps, {}, [])


class _Settings(Configurable):
    """A spawner's settings as traits: what the profile functions read and set."""
    image = Unicode("base").tag(config=True)
    storage_config = Dict({"snapshots.schedule": "@daily"}).tag(config=True)
    placement = Union([Unicode(), Callable()], default_value="least-loaded").tag(config=True)
    weights = Any(None).tag(config=True)
    internal = Unicode("kept")  # not a setting


def test_applied_values_are_kept_as_json_and_reapplied_after_a_hub_restart():
    st, saved = _Settings(), {}
    profiles.apply_overrides(st, [{"image": "lab", "storage_config": {"size": "10GiB"}, "placement": pick_first,
                                   "weights": {"m1", "m2"}}], saved, "profile 'p'")
    values = profiles.applied_values(st, saved)
    assert values == {"image": "lab", "storage_config": {"snapshots.schedule": "@daily", "size": "10GiB"}}
    kept = json.loads(json.dumps(values))  # as the hub's database keeps a server's state

    again, saved_again = _Settings(), {}  # the restarted hub's spawner
    changed = profiles.reapply(again, {**kept, "internal": "changed", "no_such": 1}, saved_again)
    assert changed == ["image", "storage_config"]
    assert (again.image, again.storage_config, again.internal) == ("lab", values["storage_config"], "kept")
    profiles.restore(again, saved_again)  # the stop after the restart
    assert (again.image, again.storage_config) == ("base", {"snapshots.schedule": "@daily"}) and not saved_again

    refused, saved_refused = _Settings(), {}
    assert profiles.reapply(refused, {"image": 5}, saved_refused) == [] and saved_refused == {}
    assert refused.image == "base"


def test_a_profile_gives_shared_folders_and_the_next_start_takes_them_back():
    course = {"name": "course", "path": "course", "read_groups": ["gpu-users"]}
    lab = {"name": "lab", "path": "lab", "write_groups": ["gpu-users"]}
    sp = _spawner(shared_volumes=[course], profile_list=[
        {"display_name": "Lab", "slug": "lab", "spawner_override": {"shared_volumes": [course, lab]}},
        {"display_name": "Plain", "slug": "plain", "default": True}])
    asyncio.run(sp.apply_profile({"profile": "lab"}))
    assert [v["name"] for v in sp.shared_volumes] == ["course", "lab"]
    # Kept with the server, so a restarted hub's stop knows them.
    assert profiles.applied_values(sp, sp._profile_saved)["shared_volumes"] == [course, lab]
    asyncio.run(sp.apply_profile({"profile": "plain"}))
    assert [v["name"] for v in sp.shared_volumes] == ["course"], "the next start's profile starts from the config"
