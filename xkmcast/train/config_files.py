"""Reading a training configuration's files: the shipped presets, YAML files with their ``extends:``
chains, and the command line's dotted ``key=value`` overrides, into one unvalidated nested dict
(:func:`read_raw`); :mod:`xkmcast.train.config` validates it.

A YAML file may start from another one (``extends: <preset name or path>``); mappings then merge key
by key underneath (:func:`deep_merge`). An override *sets* the value at its dotted key, parsed as a YAML
scalar / list (``training.lr=1e-4``, ``data.patch=[32,32]``, ``training.resume=null``).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, explain

__all__ = ["PRESETS", "list_presets", "read_raw", "apply_overrides", "deep_merge"]

PRESETS = Path(__file__).resolve().parents[1] / "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped in ``xkmcast/presets``."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def _read_yaml(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset or YAML file as a dict, with its ``extends:`` chain merged underneath."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        preset = PRESETS / f"{name_or_path}.yaml"
        if not preset.is_file():
            names = list_presets()
            raise ConfigError(explain(
                f"no preset or YAML file {str(name_or_path)!r}",
                expected=f"a path to a .yaml file or one of the presets {names}",
                found=str(name_or_path),
                fix=_suggest(str(name_or_path), names) or "run `xkmcast train --list` for the presets",
            ))
        text = preset.read_text()
    try:
        raw = _load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(explain(f"{name_or_path} is not valid YAML", found=str(exc))) from exc
    if not isinstance(raw, dict):
        raise ConfigError(explain(f"{name_or_path} must hold a mapping", found=type(raw).__name__))
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if str(base) in seen:
        raise ConfigError(explain("circular 'extends:' chain", found=[*seen, str(base)]))
    return deep_merge(_read_yaml(base, (*seen, str(name_or_path))), raw)


def read_raw(config: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The unvalidated nested dict of a preset / YAML path / dict with dotted overrides applied."""
    raw = copy.deepcopy(dict(config)) if isinstance(config, dict) else _read_yaml(config)
    return apply_overrides(raw, overrides)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``raw`` (changed in place and returned) with each ``dotted.key=value`` override set; values are YAML.

    ``apply_overrides({}, ["training.lr=3.0e-4", "data.patch=[32, 32]"])`` ->
    ``{"training": {"lr": 3.0e-4}, "data": {"patch": [32, 32]}}``. An override *sets* the value at its
    key: ``data.params={}`` empties the preset's params (``extends:`` chains, by contrast, merge
    mappings key by key); a later ``data.params.x=1`` then adds to it, and a dotted key below a
    non-mapping value replaces that value by a mapping."""
    for item in overrides:
        key, value = _one_override(item)
        node = raw
        for part in key[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[key[-1]] = value
    return raw


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge key by key, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _one_override(item: str) -> tuple[list[str], Any]:
    """``"training.lr=1e-4"`` -> (["training", "lr"], 1e-4); the value is parsed as YAML (:func:`_load_yaml`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(explain("malformed override", expected="dotted.key=value", found=item,
                                  fix="write e.g. training.lr=1e-4"))
    if not text.strip():
        return key.strip().split("."), None
    try:
        return key.strip().split("."), _load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(explain(f"the value of override {key.strip()} is not valid YAML", found=text,
                                  fix="quote it, or close its brackets: e.g. data.patch=[32,32]")) from exc


def _suggest(word: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"Did you mean {close[0]!r}?" if close else None


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, but a timestamp-shaped scalar that is no date (``2005-13-01``) stays a
    string for the schema to judge instead of raising a bare ValueError."""


def _timestamp_or_text(loader: _Loader, node):
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def _load_yaml(text: str) -> Any:
    """``text`` as YAML (the safe subset), read by :class:`_Loader`: files and overrides alike."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
