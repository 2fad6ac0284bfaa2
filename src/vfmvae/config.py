"""Typed configuration: frozen dataclasses, YAML recipes and dotted command-line overrides.

Every component has one frozen dataclass config. A recipe is a YAML file whose keys mirror the dataclass
tree; `load_config(RootConfig, "recipe.yaml", ["optim.lr=1e-4"])` builds the tree and rejects, at load
time and with the dotted key and the file named in the message:

* unknown keys (a typo never silently means "feature off", unlike dict-based configs);
* values of the wrong type (strings are converted only where unambiguous: "1e-4" for a float field);
* paths that must exist but do not (fields annotated with `ExistingPath`);
* keys that a config class has retired: a class may define `retired_keys(data, prefix) -> {key: what to write
  instead}`,
  and a recipe that still uses one is refused with that advice in one line.

Supported field types: bool, int, float, str, Path, ExistingPath, Literal[...], X | None, tuple[X, ...],
tuple[X, Y], list[X], dict[str, X] and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml

__all__ = [
    "ConfigError",
    "ExistingPath",
    "MustExist",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "parse_override",
    "dump_yaml",
    "yaml_flow",
    "read_yaml",
    "YAMLBoundError",
    "require_positive",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit its config dataclass. The message names the key and source."""


class MustExist:
    """Marker: the annotated path must exist when the config is loaded. `problem(value)` may say more precisely what
    is missing (a data source's brace pattern or glob, `vfmvae.data.source`); None means it is fine."""

    def __init__(self, problem: typing.Callable[[Any], str | None] | None = None) -> None:
        self.problem = problem

    def missing(self, value: Any) -> str | None:
        if self.problem is not None:
            return self.problem(value)
        return None if Path(value).exists() else f"path does not exist: {value}"

    def __repr__(self) -> str:
        return "MustExist()"


ExistingPath = Annotated[Path, MustExist()]
"""A `Path` that is checked for existence at load time."""

_MISSING = object()

# Bounds for YAML that we read (recipes, official configs, run folders): far above any real recipe, far below
# what exhausts memory. Aliases make a tiny file expand to billions of values ("billion laughs"); nesting makes
# PyYAML's composer (and every recursive walk after it) exceed Python's recursion limit.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 32  # our recipes nest 4 levels, the official VFM-VAE configs 5


class YAMLBoundError(ConfigError):
    """YAML over one of the bounds above: refused as a whole (never re-read as a plain string)."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _expanded_measures(root: yaml.Node, max_values: int, max_depth: int) -> tuple[int, int]:
    """(values, depth) that `root` stands for once every alias is expanded, each capped just past its bound.

    Iterative, so that neither a deep tree nor a long chain of aliases can exhaust the recursion limit; a node that
    contains itself (a recursive alias) counts as over both bounds.
    """
    memo: dict[int, tuple[int, int]] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = [memo[id(child)] for child in _children(node)]
            size = min(1 + sum(c[0] for c in children), max_values + 1)
            depth = min(1 + max((c[1] for c in children), default=0), max_depth + 1)
            memo[key] = (size, depth)
            in_progress.discard(key)
        elif key in in_progress:
            return max_values + 1, max_depth + 1
        elif key not in memo:
            in_progress.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in memo)
    return memo[id(root)]


def _event_depth(text: str, limit: int) -> int:
    """Nesting depth of the YAML text from its event stream (PyYAML's parser is not recursive; stops past `limit`)."""
    depth = deepest = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return deepest


def require_positive(config: Any, *names: str, allow_zero: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming the first field of `names` that is not > 0 (>= 0 for those in `allow_zero`)."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and name not in allow_zero):
            raise ValueError(f"{name} must be {'>= 0' if name in allow_zero else '> 0'}, got {value}")


def read_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` with bounds: size, nesting depth, alias expansion; every YAML error as one ConfigError."""
    if len(text) > MAX_YAML_BYTES:
        raise YAMLBoundError(f"{source}: {len(text):,} bytes is larger than a recipe can be ({MAX_YAML_BYTES:,})")
    try:
        too_deep = f"{source}: nested more than {MAX_YAML_DEPTH} levels deep%s; no recipe or config nests that far"
        if _event_depth(text, MAX_YAML_DEPTH) > MAX_YAML_DEPTH:  # before composing: PyYAML's composer recurses
            raise YAMLBoundError(too_deep % "")
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # cheap: aliases share one node, nothing is copied
        if node is not None:
            values, depth = _expanded_measures(node, MAX_YAML_VALUES, MAX_YAML_DEPTH)
            if values > MAX_YAML_VALUES:
                raise YAMLBoundError(
                    f"{source}: its YAML aliases (&anchor / *alias) expand to more than "
                    f"{MAX_YAML_VALUES:,} values; write the values out instead"
                )
            if depth > MAX_YAML_DEPTH:  # nesting reached through aliases
                raise YAMLBoundError(too_deep % " (with its aliases expanded)")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"{source}: not valid YAML (or a tag that only Python can build): {first[:200]}") from None


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build a `cls` instance from an optional YAML recipe plus `key.sub=value` overrides.

    Overrides are applied to the raw mapping before validation, so an override can fix a recipe that
    would not load on its own, and its value is type-checked exactly like a YAML value.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        loaded = read_yaml(path.read_text(), str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + --set overrides"
    return config_from_dict(cls, data, source=source)


def config_from_dict(cls: type[T], data: typing.Mapping[str, Any], *, source: str = "<dict>") -> T:
    """Validate a (nested) mapping against dataclass `cls` and build it."""
    return _build_dataclass(cls, data, prefix="", source=source)


def config_to_dict(config: Any) -> Any:
    """A JSON/YAML-safe nested representation of a config (Paths become strings, tuples lists)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


def yaml_flow(value: Any) -> str:
    """`value` as one line of YAML (`[0, 2, -1]`, `{name: x, path: y}`), for messages that say what to write."""
    text = yaml.safe_dump(config_to_dict(value), default_flow_style=True, width=1 << 16)
    return text.strip().removesuffix("...").strip()


def dump_yaml(config: Any) -> str:
    """The config as a YAML recipe that `load_config` reads back to an equal object."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (['a', 'b', 'c'], parsed value). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = read_yaml(raw, f"override {key}") if raw.strip() else ""
    except YAMLBoundError:
        raise
    except ConfigError:
        value = raw  # not YAML: keep as a string; the type check decides if that is acceptable
    return key.split("."), value


def apply_overrides(data: typing.Mapping[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set (intermediate mappings are created)."""
    result = json.loads(json.dumps(data, default=str))  # deep copy of plain data
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                dotted = ".".join(parts[: i + 1])
                raise ConfigError(f"override {text!r}: {dotted} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------


def _build_dataclass(cls: type[T], data: Any, *, prefix: str, source: str) -> T:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"{source}: {where}: expected a mapping for {cls.__name__}, got {data!r}")
    # keys of older recipes: refused with what to write instead (`retired_keys(data, prefix) -> {key: advice}`)
    retired = getattr(cls, "retired_keys", None)
    advice = retired(data, prefix) if retired is not None else {}
    if advice:
        raise ConfigError(
            f"{source}: "
            + "; ".join(f"{prefix}{key} is no longer a recipe key: {text}" for key, text in advice.items())
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        close = [difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.6) for k in unknown]
        guesses = [f"{prefix}{match[0]}" for match in close if match]
        hint = f"did you mean {' / '.join(guesses)}? " if guesses else ""
        raise ConfigError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(prefix + str(k) for k in unknown)} ({hint}valid keys in {where}: {known})"
        )
    kwargs = {}
    for name, field in fields.items():
        key = prefix + name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key=key, source=source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key {key}")
        else:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            _check_exists(default, hints[name], key=key, source=source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{source}: {where}: {err}") from None


def _check_exists(value: Any, tp: Any, *, key: str, source: str) -> None:
    """Defaults skip coercion but an ExistingPath default must still exist."""
    if value is None or get_origin(tp) is not Annotated:
        return
    for marker in (m for m in get_args(tp)[1:] if isinstance(m, MustExist)):
        problem = marker.missing(value)
        if problem:
            raise ConfigError(f"{source}: {key}: {problem}")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        return _type_name(get_args(tp)[0]) + " (existing)"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, *, key: str, source: str) -> Any:
    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {key}: expected {expected}, got {value!r} ({type(value).__name__})")

    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        out = _coerce(value, base, key=key, source=source)
        for marker in (m for m in meta if isinstance(m, MustExist)) if out is not None else ():
            problem = marker.missing(out)
            if problem:
                raise ConfigError(f"{source}: {key}: {problem}")
        return out
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            fail(_type_name(tp))
        candidates = [o for o in options if o is not type(None)]
        if len(candidates) == 1:  # X | None: X's own, more precise message
            return _coerce(value, candidates[0], key=key, source=source)
        for option in candidates:
            try:
                return _coerce(value, option, key=key, source=source)
            except ConfigError:
                continue
        fail(" or ".join(_type_name(o) for o in candidates))
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        fail("one of " + ", ".join(repr(c) for c in choices))
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value if value is not None else {}, prefix=key + ".", source=source)
    if origin in (tuple, list):
        args = get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            fail(f"a list for {_type_name(tp)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                fail(f"a list of {len(args)} items")
            items = [_coerce(v, a, key=f"{key}[{i}]", source=source) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [_coerce(v, item_type, key=f"{key}[{i}]", source=source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        key_type, value_type = get_args(tp) or (str, Any)
        if not isinstance(value, typing.Mapping):
            fail("a mapping")
        return {str(k): _coerce(v, value_type, key=f"{key}.{k}", source=source) for k, v in value.items()}
    if tp in (bool, int, float, str, Path):
        return _coerce_scalar(value, tp, fail)
    raise ConfigError(f"{source}: {key}: unsupported field type {tp!r} in the config class")


def _coerce_scalar(value: Any, tp: type, fail: typing.Callable[[str], typing.NoReturn]) -> Any:
    """`value` as a bool, int, float, str or Path (`tp`); `fail(expected)` raises the config error naming the key."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        fail("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        fail("a string")
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        fail("a path")
