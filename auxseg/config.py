"""Typed configuration shared by every stage.

A stage declares its options as (nested) dataclasses. Config files are YAML
with optional ``_base_`` inheritance; command-line overrides are
``dotted.key=value`` strings whose values are parsed as YAML. Loading checks
every key and type against the dataclass schema and rejects unknown keys,
naming the closest valid one. The resolved config is written next to every
output with :func:`save_config`.

Example::

    cfg = load_config(AuxLabelsConfig, "configs/auxlabels/tiny.yaml",
                      overrides=["kmeans.k=8", "device=cpu"])
    save_config(cfg, out_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from auxseg.errors import AuxsegError
from auxseg.files import atomic_write_text
from auxseg.paths import resolve_path

T = TypeVar("T")

BASE_KEY = "_base_"


class ConfigError(AuxsegError, ValueError):
    """A config file, key or value that does not match its schema."""


# ----------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    """The values a numeric config key accepts, stated in its schema as ``Annotated[float, Range(gt=0)]``.

    The loader checks it for the key itself, every item of a list or tuple, and
    every value of a mapping. Floats must also be finite unless ``finite=False``
    (the loader refuses NaN and infinities for every float key, annotated or not,
    and anywhere inside an ``Any``-typed value such as ``finetune.cfg_options``).
    ``tests/test_config_ranges.py`` walks every stage's schema and requires a
    range on each numeric key.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in (0, 1]``, ... (an interval when both ends are bounded)."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
        if high:
            return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"
        return "a finite number"

    def check(self, value: float, where: str) -> None:
        bad = ((self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt)
               or (self.le is not None and not value <= self.le) or (self.lt is not None and not value < self.lt))
        if bad:
            raise ConfigError(f"{where}: must be {self.describe()}, got {value!r}")


PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]  # a probability or share
AnyFloat = Annotated[float, Range()]  # any finite number: the key's meaning allows every sign
PositiveInt = Annotated[int, Range(ge=1)]  # counts, sizes, intervals
NonNegativeInt = Annotated[int, Range(ge=0)]  # counts where 0 means "none"
Seed = Annotated[int, Range(ge=0)]  # random seeds (numpy takes only non-negative ones)


def ranged(base: type, **bounds: float) -> Any:
    """``Annotated[base, Range(**bounds)]``, for a range none of the named aliases states."""
    return Annotated[base, Range(**bounds)]


def numeric_range(tp: Any) -> Range | None:
    """The :class:`Range` that annotates ``tp`` (None when it has none)."""
    if get_origin(tp) is Annotated:
        return next((m for m in get_args(tp)[1:] if isinstance(m, Range)), None)
    return None


# ----------------------------------------------------------------------------- files

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; more (one file, or its _base_ files together) is refused
# A _base_ file named in several sections is read once per naming, so nested files that fan out read exponentially
# many files (six small files, each naming the next ten times: 10**5 reads, 37 s). One load reads at most this many
# _base_ files, at most this deep; the shipped presets need a few, two deep.
MAX_BASE_FILES = 64
MAX_BASE_DEPTH = 8


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases.

    Nested aliases ("billion laughs") make a file of a few hundred bytes expand
    to gigabytes once merged; configs need none, so the first ``&anchor`` or
    ``*alias`` is refused before anything is expanded.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(None, None, "aliases (*name) are not allowed in configs", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(None, None, "anchors (&name) are not allowed in configs", event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """YAML text to Python data: safe types only, no anchors or aliases (:class:`_NoAliasLoader`).

    Nesting too deep for the parser's recursion (``[[[[...``) is a ``yaml.YAMLError`` like any other bad text.
    """
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("lists or mappings nested too deeply") from None


@dataclass
class _Reads:
    """What one load has read so far (:data:`MAX_BASE_FILES`, :data:`MAX_CONFIG_BYTES`)."""

    bases: int = 0
    bytes: int = 0


def read_yaml_with_bases(path: str | Path) -> dict:
    """Read a YAML config, merging the files named in its ``_base_`` keys first.

    ``_base_`` holds one path or a list of paths, relative to the file that
    names them; later bases and the file itself override earlier ones. It may
    appear at the top level and inside any nested section. A ``configs/...``
    path that is not in the current folder is the shipped preset (:mod:`auxseg.presets`).
    One load reads at most :data:`MAX_BASE_FILES` base files, nested at most
    :data:`MAX_BASE_DEPTH` deep, holding at most :data:`MAX_CONFIG_BYTES` bytes together.
    """
    return _read_with_bases(resolve_path(path), (), _Reads())


def _read_with_bases(path: Path, seen: tuple[Path, ...], reads: _Reads) -> dict:
    """One file of a load and its bases; ``seen`` is the chain of files that named it."""
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"circular _base_ inheritance: {chain}")
    if seen:
        if len(seen) > MAX_BASE_DEPTH:
            raise ConfigError(f"{seen[-1]}: _base_ files nested more than {MAX_BASE_DEPTH} deep "
                              f"(naming {path.name}); at most {MAX_BASE_DEPTH} levels are read")
        reads.bases += 1
        if reads.bases > MAX_BASE_FILES:
            raise ConfigError(f"{seen[-1]}: more than {MAX_BASE_FILES} _base_ files in one config (a file named in "
                              f"several sections counts once per naming); at most {MAX_BASE_FILES} are read")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    reads.bytes += size
    if reads.bytes > MAX_CONFIG_BYTES:
        held = f"{size} bytes" if reads.bytes == size else f"{reads.bytes} bytes with the _base_ files read before it"
        raise ConfigError(f"{path}: {held}; a config may hold at most {MAX_CONFIG_BYTES} bytes")
    try:
        data = parse_yaml(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return _resolve_bases(data, path, (*seen, path), reads)


def _resolve_bases(data: dict, path: Path, seen: tuple[Path, ...], reads: _Reads) -> dict:
    """Merge the ``_base_`` files of ``data`` and of every mapping nested in it.

    A nested ``_base_`` lets one section reuse another stage's preset, e.g.
    ``pretrain: {_base_: ../pretrain/tiny.yaml, train: {max_iters: 50}}``.
    """
    data = dict(data)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    for key, value in data.items():
        if isinstance(value, dict):
            data[key] = _resolve_bases(value, path, seen, reads)
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, _read_with_bases(resolve_path(path.parent / base), seen, reads))
    return deep_merge(merged, data)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, the rest replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides; the value is parsed as YAML (``k=8``, ``xs=[1,2]``)."""
    data = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {_one_line(err)}") from err
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        data = deep_merge(data, nested)
    return data


# ----------------------------------------------------------------------------- schema


def from_dict(schema: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``schema`` from a plain dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    hints = typing.get_type_hints(schema, include_extras=True)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
        hint = f"; did you mean {_join(where, close[0])!r}?" if close else ""
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {_join(where, key)!r}{hint} (valid keys: {valid})")
    kwargs = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        obj = schema(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err
    object.__setattr__(obj, _GIVEN, frozenset(data))  # which keys the files and overrides set (given_keys)
    return obj


_GIVEN = "_auxseg_given_keys"


def given_keys(cfg: Any) -> frozenset[str]:
    """The keys of a config section that its YAML (or ``_base_`` files, or overrides) set, not defaulted."""
    return getattr(cfg, _GIVEN, frozenset())


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against type hint ``tp``; convert lists/dicts into nested dataclasses."""
    origin = get_origin(tp)
    if tp is Any:  # passed through unchecked (cfg_options: mmseg's keys), but no number inside may be NaN or infinite
        _check_finite_inside(value, where)
        return value
    if origin is Annotated:
        return _convert_annotated(tp, value, where)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, where)
    if origin is Literal:
        return _convert_literal(tp, value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        return _convert_sequence(tp, origin, value, where)
    if origin is dict:
        return _convert_mapping(tp, value, where)
    return _convert_plain(tp, value, where)


def _convert_annotated(tp: Any, value: Any, where: str) -> Any:
    """``Annotated[base, Range(...)]``: the base type, then every range."""
    base, *meta = get_args(tp)
    ranges = [m for m in meta if isinstance(m, Range)]
    if base is float and isinstance(value, float) and not math.isfinite(value) and any(not r.finite for r in ranges):
        return value  # the key opts in to NaN / infinity (Range(finite=False))
    value = _convert(base, value, where)
    for rng in ranges:
        _check_numbers(value, rng, where)
    return value


def _convert_union(tp: Any, value: Any, where: str) -> Any:
    """``X | Y | None``: the first member that accepts the value (None only where the union allows it)."""
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value, where)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:  # X | None: X's own message (its range, its type)
        raise errors[0]
    raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")


def _convert_literal(tp: Any, value: Any, where: str) -> Any:
    """``Literal[...]``: one of the choices, with the closest one suggested."""
    choices = get_args(tp)
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}{hint}")
    return value


def _convert_sequence(tp: Any, origin: Any, value: Any, where: str) -> Any:
    """``list[X]``, ``tuple[X, ...]`` and fixed-length ``tuple[X, Y]``: each item converted."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    args = get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item_tp = args[0] if args else Any
    items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_mapping(tp: Any, value: Any, where: str) -> Any:
    """``dict[K, V]``: every key and value converted."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    key_tp, val_tp = get_args(tp) or (Any, Any)
    return {
        _convert(key_tp, k, f"{where} key"): _convert(val_tp, v, f"{where}.{k}")
        for k, v in value.items()
    }


def _convert_plain(tp: Any, value: Any, where: str) -> Any:
    """``float`` (finite; an int is accepted), ``int``, ``bool`` and ``str`` strictly (no bool for a number);
    any other class by ``isinstance``."""
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _check_numbers(value: Any, rng: Range, where: str) -> None:
    """Check a number, or each number of a list / tuple / mapping value, against ``rng``."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_numbers(item, rng, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, rng, f"{where}.{key}")
    elif isinstance(value, (int, float)):
        rng.check(value, where)


def _check_finite_inside(value: Any, where: str) -> None:
    """Refuse a NaN or infinite float anywhere in ``value`` (lists and mappings walked), naming its key path."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite_inside(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite_inside(item, f"{where}.{key}")


# ----------------------------------------------------------------------------- public API


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> T:
    """Load a config of dataclass type ``schema`` from a YAML file plus ``key=value`` overrides.

    With ``path=None`` the schema's defaults are the starting point.
    """
    data = read_yaml_with_bases(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(schema, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from err
        raise


OMIT_AT_DEFAULT = "auxseg_omit_at_default"


def added_section(factory: Any) -> Any:
    """A dataclass field for a config section added after runs had recorded their configs.

    :func:`to_dict` leaves the section out while it equals ``factory()``, so a config that does not use
    it has the plain form it had before the section existed: recorded step configs and the step names
    hashed from them (``loop.pipeline.run_step``, ``loop.study``) stay valid. Loading fills it in again.
    """
    return dataclasses.field(default_factory=factory, metadata={OMIT_AT_DEFAULT: True})


def _omitted(owner: Any, f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(OMIT_AT_DEFAULT)) and getattr(owner, f.name) == f.default_factory()


def to_dict(cfg: Any) -> dict:
    """The config as plain YAML/JSON-compatible Python data (tuples become lists; sections declared with
    :func:`added_section` are left out while they hold their defaults)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not _omitted(value, f)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(cfg)


def without_keys(data: dict, dotted_keys) -> dict:
    """A copy of plain config data (:func:`to_dict`) without the given ``a.b.c`` keys (absent ones are ignored)."""
    import copy

    data = copy.deepcopy(data)
    for dotted in dotted_keys:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML text (a dataclass, or its plain-data form)."""
    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    path = Path(path)
    atomic_write_text(path, dump_config(cfg))
    return path
