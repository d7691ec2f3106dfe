"""KubeSpawner's `profile_list`, read as KubeSpawner reads it, so a configuration copied from a
zero-to-jupyterhub hub works here: what the operator offers (profiles, their options and
choices, free-text "unlisted" choices), who may choose it (`groups`), and which overrides one
choice selects. Pure functions: every refusal message is checked without a hub.

The choice reaches the spawner as user_options, from the form or the REST API alike:
`{"profile": slug, "<option>": choice, "<option>--unlisted-choice": text}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jinja2
from jupyterhub.utils import maybe_future
from traitlets import TraitError

from .settings_values import ConfigError

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner

UNLISTED = "unlisted-choice"  # an option's value when its free-text field is used: KubeSpawner's form sends it
# ...and so does ours, which sent "unlisted_choice" before (REST clients copied that): both are read.
UNLISTED_VALUES = (UNLISTED, "unlisted_choice")
UNLISTED_SUFFIX = "--unlisted-choice"
OVERRIDE_KEYS = ("spawner_override", "kubespawner_override")  # the same thing under both names


@dataclass(frozen=True)
class Choice:
    slug: str
    display_name: str
    default: bool = False
    override: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Unlisted:
    display_name: str
    validation_regex: str = ""
    validation_message: str = ""
    override: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    name: str
    display_name: str
    choices: tuple[Choice, ...]
    unlisted: Unlisted | None = None

    def default_choice(self) -> str:
        """The choice taken when none is given; "" when nothing is listed (only the user's own
        text can be the value)."""
        for choice in self.choices:
            if choice.default:
                return choice.slug
        return self.choices[0].slug if self.choices else ""


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str = ""
    default: bool = False
    override: Mapping = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    groups: tuple[str, ...] = ()  # empty: everyone

    def open_to(self, user_groups: Iterable[str]) -> bool:
        return not self.groups or bool(set(self.groups) & set(user_groups))


@dataclass(frozen=True)
class Selection:
    """One spawn's choice: the profile, each option's value as chosen, and the overrides to
    apply, in order (the profile's, then each option's): later layers win. `unlisted` names
    the options whose value is the user's own text (which may look like a listed slug)."""
    profile: Profile
    values: dict[str, str]
    overrides: tuple[Mapping, ...]
    unlisted: frozenset[str] = frozenset()


def slugify(display_name: str) -> str:
    """A slug made from a display name, as KubeSpawner makes one: lower case, runs of anything
    but letters and digits become one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-") or "profile"


def _override(raw: Mapping, where: str) -> Mapping:
    given = [k for k in OVERRIDE_KEYS if k in raw]
    if len(given) > 1:
        raise ConfigError(f"{where}: has both spawner_override and kubespawner_override; use one")
    value = raw.get(given[0], {}) if given else {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {given[0]} must be a dict of spawner settings, not {type(value).__name__}")
    return dict(value)


def _mapping(raw, where: str) -> Mapping:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a dict, not {type(raw).__name__}")
    return raw


def _unlisted(raw, where: str) -> Unlisted | None:
    if raw is None:
        return None
    raw = _mapping(raw, where)
    if not raw.get("enabled"):
        return None
    regex = str(raw.get("validation_regex") or "")
    if regex:
        try:
            re.compile(regex)
        except re.error as e:
            raise ConfigError(f"{where}.validation_regex {regex!r} is not a regular expression: {e}") from None
    return Unlisted(str(raw.get("display_name") or "Other"), regex, str(raw.get("validation_message") or ""),
                    _override(raw, where))


def _option(name: str, raw, where: str) -> Option:
    raw = _mapping(raw, where)
    choices_raw = raw.get("choices") or {}
    if not isinstance(choices_raw, Mapping):
        raise ConfigError(f"{where}.choices must be a dict of choice slug to choice")
    choices = []
    for slug, choice in choices_raw.items():
        cw = f"{where}.choices[{slug!r}]"
        if slug in UNLISTED_VALUES:
            raise ConfigError(f"{cw}: {slug!r} cannot be a choice's slug (it stands for the unlisted choice)")
        choice = _mapping(choice, cw)
        choices.append(Choice(str(slug), str(choice.get("display_name") or slug), bool(choice.get("default")),
                              _override(choice, cw)))
    unlisted = _unlisted(raw.get("unlisted_choice"), f"{where}.unlisted_choice")
    if not choices and unlisted is None:
        raise ConfigError(f"{where}: has no choices and no enabled unlisted_choice: nothing could be chosen")
    if sum(c.default for c in choices) > 1:
        raise ConfigError(f"{where}: more than one choice has default = True")
    return Option(str(name), str(raw.get("display_name") or name), tuple(choices), unlisted)


def normalize(raw) -> list[Profile]:
    """profile_list (a list, or a dict whose keys are slugs) as Profiles, refused with the
    place of the problem when it cannot work (duplicate slugs, two defaults, bad regex)."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        items = [({**_mapping(p, f"profile_list[{k!r}]"), "slug": p.get("slug") or k}, f"profile_list[{k!r}]")
                 for k, p in raw.items()]
    elif isinstance(raw, (list, tuple)):
        items = [(_mapping(p, f"profile_list[{i}]"), f"profile_list[{i}]") for i, p in enumerate(raw)]
    else:
        raise ConfigError(f"profile_list must be a list or a dict, not {type(raw).__name__}")
    profiles, seen = [], set()
    for p, where in items:
        display = str(p.get("display_name") or p.get("slug") or "")
        if not display:
            raise ConfigError(f"{where}: needs a display_name (or a slug)")
        slug = str(p.get("slug") or slugify(display))
        if slug in seen:
            raise ConfigError(f"{where}: slug {slug!r} is used by two profiles; give each its own slug")
        seen.add(slug)
        options_raw = p.get("profile_options") or {}
        if not isinstance(options_raw, Mapping):
            raise ConfigError(f"{where}.profile_options must be a dict of option name to option")
        for name in options_raw:
            if name == "profile" or str(name).endswith(UNLISTED_SUFFIX):
                raise ConfigError(f"{where}.profile_options: {name!r} cannot be an option name")
        options = tuple(_option(n, o, f"{where}.profile_options[{n!r}]") for n, o in options_raw.items())
        groups = p.get("groups") or ()
        if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
            raise ConfigError(f"{where}.groups must be a list of group names")
        profiles.append(Profile(slug, display, str(p.get("description") or ""), bool(p.get("default")),
                                _override(p, where), options, tuple(groups)))
    if sum(p.default for p in profiles) > 1:
        raise ConfigError("profile_list: more than one profile has default = True")
    return profiles


async def listed(spawner: LxdSpawner) -> list[Profile]:
    """The spawner's profile_list (called when a callable, awaited when async), read."""
    raw = spawner.profile_list
    if callable(raw):
        raw = await maybe_future(raw(spawner))
    return normalize(raw)


def offered(profiles: list[Profile], user_groups: Iterable[str]) -> list[Profile]:
    """The profiles this user may choose (and sees in the form)."""
    groups = set(user_groups)
    return [p for p in profiles if p.open_to(groups)]


def default_profile(profiles: list[Profile]) -> Profile:
    for p in profiles:
        if p.default:
            return p
    return profiles[0]


def _fill(value, text: str):
    """An unlisted choice's override with {value} replaced by the user's text, in strings at
    any depth (never str.format: braces in the operator's other strings stay as they are)."""
    if isinstance(value, str):
        return value.replace("{value}", text)
    if isinstance(value, Mapping):
        return {k: _fill(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, text) for v in value]
    return value


def select(profiles: list[Profile], user_options: Mapping, user_groups: Iterable[str]) -> Selection:
    """The profile and choices user_options name (the defaults for what they leave out),
    refused with a message naming the option and the value when it is not on offer."""
    mine = offered(profiles, user_groups)
    wanted = user_options.get("profile")
    if wanted in (None, ""):
        if not mine:
            raise ConfigError("no profile is available to you (profile_list is limited to groups you are not in)")
        profile = default_profile(mine)
    else:
        if not isinstance(wanted, str):
            raise ConfigError(f"profile must be a profile's slug (a string), not {type(wanted).__name__}")
        profile = next((p for p in profiles if p.slug == wanted), None)
        if profile is None:
            raise ConfigError(f"profile {wanted!r} does not exist; choose one of {[p.slug for p in mine]}")
        if profile not in mine:
            raise ConfigError(f"profile {wanted!r} is not available to you (it is limited to the groups "
                              f"{list(profile.groups)})")
    values, overrides, unlisted = {}, [profile.override], set()
    for option in profile.options:
        chosen = user_options.get(option.name)
        text = user_options.get(option.name + UNLISTED_SUFFIX)
        for key, value in ((option.name, chosen), (option.name + UNLISTED_SUFFIX, text)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"option {key!r} of profile {profile.slug!r} must be a string, "
                                  f"not {type(value).__name__}")
        if text:  # KubeSpawner's rule: the text wins whenever it is given, whatever the option says
            if option.unlisted is None:
                raise ConfigError(f"option {option.name!r} of profile {profile.slug!r} takes no value of your own "
                                  f"(you gave {text!r}); choose one of {[c.slug for c in option.choices]}")
            regex = option.unlisted.validation_regex
            if regex and re.fullmatch(regex, text) is None:
                why = option.unlisted.validation_message or f"it must match {regex!r}"
                raise ConfigError(f"option {option.name!r} of profile {profile.slug!r}: {text!r} is refused: {why}")
            values[option.name] = text
            unlisted.add(option.name)
            overrides.append(_fill(option.unlisted.override, text))
            continue
        if chosen in (None, ""):
            chosen = option.default_choice()
        if not chosen or (chosen in UNLISTED_VALUES and option.unlisted is not None):
            raise ConfigError(f"option {option.name!r} of profile {profile.slug!r} needs a value of your own "
                              f"(in {option.name + UNLISTED_SUFFIX!r})")
        choice = next((c for c in option.choices if c.slug == chosen), None)
        if choice is None:
            raise ConfigError(f"option {option.name!r} of profile {profile.slug!r} has no choice {chosen!r}; "
                              f"choose one of {[c.slug for c in option.choices]}")
        values[option.name] = choice.slug
        overrides.append(choice.override)
    return Selection(profile, values, tuple(overrides), frozenset(unlisted))


def from_form(formdata: Mapping[str, list]) -> dict:
    """The form's fields as user_options: the chosen profile's option fields only (the form
    shows every profile's, so that it works without JavaScript). Without JavaScript the text
    field is sent even when its select names a listed choice (it may still hold the last
    text): then it is dropped, since the text would win."""
    slug = (formdata.get("profile") or [""])[0]
    options: dict[str, str] = {"profile": slug} if slug else {}
    prefix = f"profile-option-{slug}--"
    for key, values in formdata.items():
        if slug and key.startswith(prefix) and values:
            name, value = key[len(prefix):], str(values[0]).strip()
            if value:
                sentinel = value in UNLISTED_VALUES and not name.endswith(UNLISTED_SUFFIX)
                options[name] = UNLISTED if sentinel else value
    for name in [n for n in options if n.endswith(UNLISTED_SUFFIX)]:
        listed = options.get(name[:-len(UNLISTED_SUFFIX)])
        if listed is not None and listed != UNLISTED:
            del options[name]
    return options


_form = jinja2.Environment(loader=jinja2.PackageLoader("tf_lxd_spawner", "templates"), autoescape=True,
                           undefined=jinja2.StrictUndefined).get_template("profiles_form.html.j2")


def render_form(profiles: list[Profile], last: Mapping | None) -> str:
    """The form for the profiles this user may choose, with the server's last choice (its
    saved user_options) selected; "" when there is nothing to choose. Each option's field is
    (the select's value, the text field's): the text is the user's own or empty."""
    if not profiles or (len(profiles) == 1 and not profiles[0].options):
        return ""
    last = dict(last or {})
    selected = next((p for p in profiles if p.slug == last.get("profile")), None) or default_profile(profiles)
    fields = {p.slug: {o.name: (o.default_choice(), "") for o in p.options} for p in profiles}
    if selected.slug == last.get("profile") or not last.get("profile"):
        try:
            chosen = select(profiles, {**last, "profile": selected.slug}, _all_groups(profiles))
        except ConfigError:
            chosen = None  # the last choice is no longer on offer: the defaults
        if chosen is not None:
            fields[selected.slug] = {name: (UNLISTED, value) if name in chosen.unlisted else (value, "")
                                     for name, value in chosen.values.items()}
    return _form.render(profiles=profiles, selected=selected, fields=fields, unlisted_value=UNLISTED)


def _all_groups(profiles: list[Profile]) -> set[str]:
    return {g for p in profiles for g in p.groups}


def _copy(value):
    """dicts and lists copied at any depth, anything else shared: the operator's values are
    never changed in place, and a callable (or a bound method's object) is not copied."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _merged(base: Mapping, extra: Mapping) -> dict:
    """KubeSpawner's recursive_update, on a copy: nested dicts merge, None deletes a key, a
    dict that ends up empty is dropped, anything else replaces."""
    merged = _copy(base)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            inner = _merged(merged[key] if isinstance(merged.get(key), Mapping) else {}, value)
            if inner:
                merged[key] = inner
            else:
                merged.pop(key, None)
        else:
            merged[key] = _copy(value)
    return merged


def _merged_variables(base, extra: Mapping):
    """module_variables from a profile merge into the operator's (a dict, or a callable whose
    result they merge into)."""
    if callable(base):
        async def merged(spawner):
            return _merged(await maybe_future(base(spawner)) or {}, extra)
        return merged
    return _merged(base or {}, extra)


def _takes_callable(spawner: LxdSpawner, key: str, value) -> bool:
    """Whether the setting itself takes this callable (placement, get_uid_gid, module_variables,
    hooks): then it is the new value; elsewhere a callable is called with the spawner for the
    value, as KubeSpawner does."""
    validate = getattr(spawner.traits()[key], "validate", None)
    if validate is None:  # Any
        return True
    try:
        validate(spawner, value)
    except TraitError:
        return False
    return True


def apply_overrides(spawner: LxdSpawner, layers: Iterable[Mapping], saved: dict, where: str) -> list[str]:
    """Set each layer's settings on the spawner, in order (later layers win), as KubeSpawner's
    kubespawner_override does: a callable value is called with the spawner (unless the setting
    takes a callable); a dict merges into a dict-valued setting (module_variables also into a
    callable's result). Before the first change of a setting a copy of its value is put in
    `saved`, so the next start restores it before applying another profile (the spawner object
    outlives a start). Returns the settings changed; a key that is no setting of the spawner
    is refused."""
    settable = set(spawner.trait_names(config=True))
    changed = []
    for layer in layers:
        for key, value in layer.items():
            if key not in settable:
                raise ConfigError(f"{where}: overrides {key!r}, which is not a setting of {type(spawner).__name__} "
                                  "(a KubeSpawner-only setting has no equivalent here); remove it from the profile")
            if callable(value) and not _takes_callable(spawner, key, value):
                value = value(spawner)
            current = getattr(spawner, key)
            saved.setdefault(key, _copy(current))
            if key == "module_variables" and isinstance(value, Mapping):
                value = _merged_variables(current, value)
            elif isinstance(value, Mapping) and isinstance(current, Mapping):
                value = _merged(current, value)
            else:
                value = _copy(value)
            try:
                setattr(spawner, key, value)
            except Exception as e:  # traitlets' TraitError: a value of the wrong kind
                raise ConfigError(f"{where}: {key} = {value!r} is refused: {e}") from None
            changed.append(key)
    return changed


def restore(spawner: LxdSpawner, saved: dict) -> None:
    """Put back the settings the last start's profile changed."""
    for key, value in saved.items():
        setattr(spawner, key, value)
    saved.clear()


def applied_values(spawner: LxdSpawner, saved: dict) -> dict:
    """The current values of the settings a profile changed (the names in `saved`) that can be
    kept in the server's state (JSON), so that a restarted hub sets them again for a server
    still running (its stop uses them); callables and other objects are left out."""
    values = {}
    for key in saved:
        value = getattr(spawner, key)
        if callable(value):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        values[key] = _copy(value)
    return values


def reapply(spawner: LxdSpawner, values: Mapping, saved: dict) -> list[str]:
    """applied_values() set again (after a hub restart), their originals put in `saved` as
    apply_overrides does, so restore() undoes them. A name that is no setting of the spawner,
    or a value it refuses (the configuration changed since), is skipped: an old state must not
    stop the hub from loading."""
    settable = set(spawner.trait_names(config=True))
    changed = []
    for key, value in values.items():
        if key not in settable:
            continue
        current = getattr(spawner, key)
        try:
            setattr(spawner, key, _copy(value))
        except Exception:  # traitlets' TraitError, or a validator's own
            continue
        saved.setdefault(key, _copy(current))
        changed.append(key)
    return changed
