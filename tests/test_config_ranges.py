"""Every numeric key of every stage's config states its range, and the loader enforces it.

The test walks the schemas (each stage's root config and every section nested
in it, the pre-training objectives' sections included), so a key added later
without a range fails here, and every range is checked through the same loader
a user's file goes through: a value outside it, NaN and infinity are refused
with an error naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
import typing
from typing import Annotated, Any, Union, get_args, get_origin

import pytest

from auxlabels.config import AuxLabelsConfig
from auxlabels.feature_view import FeatureViewConfig
from auxlabels.soft_segments_run import SoftSegmentsConfig
from auxseg.config import (
    MAX_BASE_DEPTH,
    MAX_BASE_FILES,
    ConfigError,
    Range,
    from_dict,
    load_config,
    numeric_range,
    parse_yaml,
    read_yaml_with_bases,
)
from auxseg.presets import ROOT as PRESETS_ROOT
from finetune.config import FinetuneConfig
from loop.pipeline import PipelineConfig
from loop.study import StudyConfig
from pretrain.config import PretrainConfig

ROOTS = [AuxLabelsConfig, FeatureViewConfig, SoftSegmentsConfig, PretrainConfig, FinetuneConfig, PipelineConfig,
         StudyConfig]
# Keys typed Any (no range can be stated), by the section that declares them, and why that is right for each;
# the loader refuses NaN and infinity anywhere inside them all the same (test_any_typed_keys_refuse_non_finite_numbers)
ANY_ALLOWED = {
    ("FinetuneConfig", "cfg_options"): "mmseg's own config keys, passed to mmseg.Config.merge_from_dict as given",
}


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _numeric_kind(tp: Any) -> type | None:
    """int or float when ``tp`` (minus Optional / Annotated / containers) holds numbers, else None."""
    tp = _strip_optional(tp)
    if get_origin(tp) is Annotated:
        return _numeric_kind(get_args(tp)[0])
    if tp in (int, float):
        return tp
    if get_origin(tp) in (list, tuple):
        kinds = {_numeric_kind(a) for a in get_args(tp) if a is not Ellipsis}
        kinds.discard(None)
        return float if float in kinds else (int if kinds else None)
    if get_origin(tp) is dict:
        return _numeric_kind(get_args(tp)[1])
    return None


def _walk(schema: type, prefix: tuple[str, ...] = ()):
    """Yield ``(path, type hint, root-relative dotted key)`` of every numeric leaf below ``schema``."""
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        tp = hints[f.name]
        inner = _strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            yield from _walk(inner, (*prefix, f.name))
        elif _numeric_kind(tp) is not None:
            yield (*prefix, f.name), tp


def _holds_any(tp: Any) -> bool:
    """True when ``tp`` is Any or holds Any (in an Optional, a list, a tuple, a mapping's values)."""
    if tp is Any:
        return True
    if get_origin(tp) is Annotated:
        return _holds_any(get_args(tp)[0])
    return any(_holds_any(a) for a in get_args(tp) if a is not Ellipsis)


def _any_keys(schema: type, prefix: tuple[str, ...] = ()):
    """Yield ``(path, declaring section, key)`` of every Any-typed key below ``schema`` (sections in lists and
    mappings included)."""
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        tp, path = hints[f.name], (*prefix, f.name)
        sections = [a for a in (_strip_optional(tp), *get_args(_strip_optional(tp))) if dataclasses.is_dataclass(a)]
        if sections:
            for section in sections:
                yield from _any_keys(section, path)
        elif _holds_any(tp):
            yield path, schema.__name__, f.name


ANY_KEYS = [(root, ".".join(path), (owner, key)) for root in ROOTS for path, owner, key in _any_keys(root)]


def _range_of(tp: Any) -> Range | None:
    tp = _strip_optional(tp)
    return numeric_range(tp)


def _leaves():
    seen = set()
    for root in ROOTS:
        for path, tp in _walk(root):
            key = (root.__name__, path)
            if key not in seen:
                seen.add(key)
                yield root, path, tp


LEAVES = list(_leaves())


def test_walk_finds_the_schemas_keys():
    keys = {(r.__name__, ".".join(p)) for r, p, _ in LEAVES}
    assert ("PretrainConfig", "optim.lr") in keys and ("AuxLabelsConfig", "kmeans.k_factor") in keys
    assert ("PretrainConfig", "loss.infonce.temperature") in keys  # objective sections are walked too
    assert len(keys) > 100


def test_every_any_typed_key_is_allowed_with_a_reason():
    """An Any-typed key escapes the range and type checks (a number in it could be anything): each one must be
    listed in ANY_ALLOWED with why no narrower type fits."""
    found = {declared for _, _, declared in ANY_KEYS}
    assert ("FinetuneConfig", "cfg_options") in found  # the walk sees them
    unlisted = sorted({f"{owner}.{key}" for owner, key in found - set(ANY_ALLOWED)})
    assert not unlisted, "Any-typed keys without a reason in ANY_ALLOWED:\n" + "\n".join(unlisted)
    assert all(ANY_ALLOWED.values()) and set(ANY_ALLOWED) <= found  # no stale entries


@pytest.mark.parametrize("root, key", [(r, k) for r, k, _ in ANY_KEYS], ids=[f"{r.__name__}.{k}" for r, k, _ in ANY_KEYS])
def test_any_typed_keys_refuse_non_finite_numbers(root, key):
    path = tuple(key.split("."))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match=rf"^{key}\.a\.b\[1\]: must be a finite number"):
            from_dict(root, _nested(path, {"a": {"b": [1.0, bad]}}))
    from_dict(root, _nested(path, {"a": {"b": [1.0, 2, "x", None]}}))  # finite numbers and the rest pass


def test_cfg_options_nan_is_refused_naming_the_key_path():
    """The reported case: ``cfg_options={optim_wrapper.optimizer.lr: .nan}`` loaded and reached mmseg."""
    with pytest.raises(ConfigError, match=r"^cfg_options\.optim_wrapper\.optimizer\.lr: must be a finite number"):
        load_config(FinetuneConfig, None, ["cfg_options={optim_wrapper.optimizer.lr: .nan}"])
    with pytest.raises(ConfigError, match=r"^cfg_options\.param_scheduler\[0\]\.eta_min: must be a finite number"):
        load_config(FinetuneConfig, None, ["cfg_options={param_scheduler: [{eta_min: -.inf}]}"])
    cfg = load_config(FinetuneConfig, None, ["cfg_options={optim_wrapper.optimizer.lr: 0.01}"])
    assert cfg.cfg_options == {"optim_wrapper.optimizer.lr": 0.01}


def test_every_numeric_key_states_its_range():
    missing = [f"{r.__name__}: {'.'.join(p)}" for r, p, tp in LEAVES if _range_of(tp) is None]
    assert not missing, "numeric keys without a Range in their schema:\n" + "\n".join(missing)


def _nested(path: tuple[str, ...], value: Any) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


def _shaped(tp: Any, number: Any) -> Any:
    """``number`` in the shape the key takes (a list / tuple of it, a mapping to it)."""
    tp = _strip_optional(tp)
    if get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    tp = _strip_optional(tp)
    if get_origin(tp) is tuple:
        args = get_args(tp)
        n = 1 if args and args[-1] is Ellipsis else len(args)
        return [number] * n
    if get_origin(tp) is list:
        return [number]
    if get_origin(tp) is dict:
        return {"a": number}
    return number


def _outside(rng: Range, kind: type) -> list[float]:
    """Values just outside ``rng`` (for ints: the nearest integers outside)."""
    step = 1 if kind is int else 1e-6
    out = []
    if rng.ge is not None:
        out.append(math.ceil(rng.ge) - 1 if kind is int else rng.ge - step)
    if rng.gt is not None:
        out.append(math.floor(rng.gt) if kind is int else rng.gt)
    if rng.le is not None:
        out.append(math.floor(rng.le) + 1 if kind is int else rng.le + step)
    if rng.lt is not None:
        out.append(math.ceil(rng.lt) if kind is int else rng.lt)
    return out


@pytest.mark.parametrize("root, path, tp", LEAVES, ids=[f"{r.__name__}.{'.'.join(p)}" for r, p, _ in LEAVES])
def test_loader_refuses_out_of_range_and_non_finite(root, path, tp):
    rng, kind = _range_of(tp), _numeric_kind(tp)
    assert rng is not None, f"{root.__name__}.{'.'.join(path)} states no range in its schema"
    dotted = ".".join(path)
    for bad in _outside(rng, kind):
        with pytest.raises(ConfigError, match=rf"{dotted}(\[0\]|\.a)?: must be "):
            from_dict(root, _nested(path, _shaped(tp, bad)))
    if kind is float and rng.finite:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ConfigError, match=rf"{dotted}(\[0\]|\.a)?: must be a finite number"):
                from_dict(root, _nested(path, _shaped(tp, bad)))


def test_defaults_are_inside_their_ranges():
    for root in ROOTS:
        from_dict(root, {})  # every default passes its own range


def test_reported_cases_name_the_key():
    """The cases that passed validation before: NaN learning rate, NaN / inf / negative K factor, negative
    class count, zero intervals and sizes."""
    cases = [
        (PretrainConfig, "optim.lr=.nan", "optim.lr: must be a finite number"),
        (PretrainConfig, "loss.infonce.temperature=.nan", "loss.infonce.temperature: must be a finite number"),
        (PretrainConfig, "train.log_every=0", "train.log_every: must be >= 1"),
        (AuxLabelsConfig, "kmeans.k_factor=.nan", "kmeans.k_factor: must be a finite number"),
        (AuxLabelsConfig, "kmeans.k_factor=.inf", "kmeans.k_factor: must be a finite number"),
        (AuxLabelsConfig, "kmeans.k_factor=-1", "kmeans.k_factor: must be > 0"),
        (AuxLabelsConfig, "num_classes=-4", "num_classes: must be >= 1"),
        (AuxLabelsConfig, "superpixels.n_segments=0", "superpixels.n_segments: must be >= 1"),
        (AuxLabelsConfig, "kmeans.fit_pixels=0", "kmeans.fit_pixels: must be >= 1"),
        (AuxLabelsConfig, "kmeans.k=1", "kmeans.k: must be >= 2"),
    ]
    for schema, override, message in cases:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load_config(schema, None, [override])


def test_alias_bomb_refused_in_under_a_second(tmp_path):
    """A 'billion laughs' file: 9 levels of nested aliases (about 10 GB once expanded) is refused unexpanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^{bomb}: not valid YAML: anchors \(&name\) are not allowed"):
        load_config(PretrainConfig, bomb)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(ConfigError, match="aliases"):
        load_config(PretrainConfig, None, ["optim.lr=*x"])
    assert parse_yaml("a: [1, {b: 2}]") == {"a": [1, {"b": 2}]}


def test_oversized_config_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 120_000)
    with pytest.raises(ConfigError, match="at most 1048576 bytes"):
        load_config(PretrainConfig, big)


# ----------------------------------------------------------------------------- _base_ inheritance, bounded


def _fan_out(folder, files: int, fan: int):
    """``files`` configs, each naming the next in ``fan`` sections: fan ** (files - 1) reads once resolved."""
    for i in range(files):
        body = "".join(f"s{j}:\n  _base_: f{i + 1}.yaml\n" for j in range(fan)) if i < files - 1 else "x: 1\n"
        (folder / f"f{i}.yaml").write_text(body)
    return folder / "f0.yaml"


def test_base_fan_out_bomb_refused_in_under_a_second(tmp_path):
    """The reported case: small files each naming the next ten times (six took 37 s); ten files is 10**9 reads."""
    top = _fan_out(tmp_path, files=10, fan=10)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/f{MAX_BASE_DEPTH}\.yaml: _base_ files nested more than "
                                          rf"{MAX_BASE_DEPTH} deep"):
        load_config(PretrainConfig, top)
    assert time.perf_counter() - t0 < 1.0


def test_base_fan_out_within_the_depth_refused_by_count(tmp_path):
    """Five files, ten sections each: 11,110 reads at depth 4; refused at the 65th base file."""
    top = _fan_out(tmp_path, files=5, fan=10)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"\.yaml: more than {MAX_BASE_FILES} _base_ files in one config") as info:
        read_yaml_with_bases(top)
    assert time.perf_counter() - t0 < 1.0 and len(str(info.value).splitlines()) == 1


def test_base_limits_leave_room_for_legitimate_inheritance(tmp_path):
    """A chain MAX_BASE_DEPTH deep and MAX_BASE_FILES bases in all still load."""
    chain = {"x": 1}
    for _ in range(MAX_BASE_DEPTH):
        chain = {"s0": chain}
    assert read_yaml_with_bases(_fan_out(tmp_path, files=MAX_BASE_DEPTH + 1, fan=1)) == chain
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "leaf.yaml").write_text("x: 1\n")
    (wide / "top.yaml").write_text("".join(f"s{j}:\n  _base_: leaf.yaml\n" for j in range(MAX_BASE_FILES)))
    assert read_yaml_with_bases(wide / "top.yaml") == {f"s{j}": {"x": 1} for j in range(MAX_BASE_FILES)}


def test_every_shipped_preset_still_loads():
    """The bounds refuse none of the shipped YAML presets (each read with its _base_ files)."""
    presets = sorted((PRESETS_ROOT / "configs").rglob("*.yaml"))
    assert len(presets) > 20
    for path in presets:
        assert isinstance(read_yaml_with_bases(path), dict), path


@pytest.mark.parametrize("text, match", [
    ("_base_: 5\n", r"_base_ must be a path or a list of paths, got 5"),
    ("a:\n  _base_: [x.yaml, {b: 1}]\n", r"_base_ must be a path or a list of paths"),
    ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", r"not valid YAML: lists or mappings nested too deeply"),
], ids=["number", "mapping-in-list", "nested-20k-deep"])
def test_malformed_base_and_deep_nesting_are_one_line(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}: {match}") as info:
        read_yaml_with_bases(path)
    assert len(str(info.value).splitlines()) == 1
