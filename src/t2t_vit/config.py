"""One set of defaults (the paper's ImageNet recipe), overridden by a YAML file, then by the command line."""

import copy
import difflib
import errno
import importlib.resources
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .config_keys import DEFAULTS, RULES, SCHEMA
from .errors import InputError, is_int, is_number


class _Loader(yaml.SafeLoader):
    """PyYAML's safe YAML 1.1, where numbers with an exponent and no dot (2e-3, 1e3) are floats, as users write
    them (YAML 1.1 reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*)(?:\.\d*)?[eE][-+]?\d+$"), list("-+0123456789")
)

HISTORY_KEY = "resumes"  # where a run directory's saved config records what each resume changed; not a config key

_RANGE = re.compile(r"^(int|number)(?: (>=|>) (\S+)| in ([\[(])(\S+), (\S+)([\])]))?$")


# Short names of choices, taken for them: the precisions as `eval --precision` and `predict --precision` write them.
SHORT_NAMES = {"bf16": "bfloat16", "fp16": "float16"}


def check_value(key: str, value: Any, source: str = "") -> Any:
    """`value` as config key `key`'s rule allows it (an int key takes 1e3 as 1000), else an InputError naming the
    key, the value, where it came from and what is allowed."""
    rule = RULES[key]
    optional, rule = rule.startswith("? "), rule.removeprefix("? ")
    if rule.startswith("auto or "):
        if value == "auto":
            return value
        try:
            return _check_rule(rule.removeprefix("auto or "), key, value, source, optional)
        except InputError as e:
            raise InputError(str(e).replace("expected ", "expected auto or ", 1)) from None
    return _check_rule(rule, key, value, source, optional)


def _check_rule(rule: str, key: str, value: Any, source: str, optional: bool) -> Any:
    """`check_value` for one rule (without its "? " and "auto or " prefixes)."""

    def fail(allowed: str) -> InputError:
        where = f" (from {source})" if source else ""
        return InputError(
            f"config key {key} = {value!r}{where} is not allowed: expected {allowed}" + (" or null" if optional else "")
        )

    if value is None:
        if optional:
            return None
        raise fail("a value, not null")
    number = is_number(value)
    if rule == "text":
        if isinstance(value, str) or number:
            return str(value)
        raise fail("text")
    if rule == "bool":
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if rule == "mapping":
        if not isinstance(value, dict):
            raise fail("a mapping, e.g. {embed_dim: 128}")
        glued = [k for k, v in value.items() if v is None and isinstance(k, str) and ":" in k]
        if glued:  # YAML reads {depth:0} as the key "depth:0" set to null
            spaced = ", ".join(k.replace(":", ": ", 1) for k in glued)
            raise fail(f"a space after each colon, as YAML needs: {{{spaced}}}")
        return value
    if rule.startswith("one of "):
        choices = rule.removeprefix("one of ").split("|")
        if isinstance(value, str) and SHORT_NAMES.get(value) in choices:  # bf16, as eval's --precision says it
            return SHORT_NAMES[value]
        if value in choices:
            return value
        raise fail("one of " + ", ".join(choices))
    if rule.startswith("numbers"):
        n = int(rule[8:-1]) if rule != "numbers" else None
        ok = isinstance(value, list) and value and all(is_number(v) for v in value)
        if ok and (n is None or len(value) == n):
            return value
        raise fail(f"a list of {n or 'one or more'} numbers, e.g. [{', '.join(['0.5'] * (n or 3))}]")
    if rule == "size":
        sizes = value if isinstance(value, list) and len(value) == 2 else [value]
        if all(is_int(v) and v >= 1 for v in sizes):
            return value
        raise fail("a size in pixels >= 1, or [height, width]")
    kind, op, bound, lo_br, lo, hi, hi_br = _RANGE.match(rule).groups()
    allowed = "an integer" if kind == "int" else "a number"
    allowed += f" {op} {bound}" if op else f" in {lo_br}{lo}, {hi}{hi_br}" if lo_br else ""
    if not number or value != value or (kind == "int" and not isinstance(value, int) and not value.is_integer()):
        raise fail(allowed)
    value = int(value) if kind == "int" else value
    if op and not (value >= float(bound) if op == ">=" else value > float(bound)):
        raise fail(allowed)
    if lo_br and not (
        (value >= float(lo) if lo_br == "[" else value > float(lo))
        and (value <= float(hi) if hi_br == "]" else value < float(hi))
    ):
        raise fail(allowed)
    return value


def check_values(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Every key of a config checked (and normalised) by `check_value`; unknown keys are an InputError."""
    return {key: check_value(_known(key, "the config"), value) for key, value in cfg.items()}


def _known(key: str, source: str) -> str:
    if key not in DEFAULTS:
        import difflib

        close = difflib.get_close_matches(key, DEFAULTS, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise InputError(f"unknown config key {key!r} in {source}{hint}")
    return key


def describe_keys(defaults: Optional[Dict[str, Any]] = None) -> str:
    """The config keys with their defaults (`defaults`: a command's own, e.g. its config's) and meanings, by section
    (for `t2t-vit train --help`)."""
    defaults = DEFAULTS if defaults is None else defaults
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"{section}:")
        for key, (_, _, meaning) in keys.items():
            value = yaml.safe_dump(defaults[key], default_flow_style=True, width=1000).strip().removesuffix("\n...")
            lines.append(f"  --{key.replace('_', '-'):<20} {value:<24} {meaning}")
    return "\n".join(lines)


def config_names() -> List[str]:
    """The configs shipped in the package (`--config NAME`)."""
    return sorted(p.name[:-5] for p in _config_dir().iterdir() if p.name.endswith(".yaml"))


def _config_dir() -> Any:
    return importlib.resources.files(__package__) / "configs"


def load_yaml(path: Path) -> Dict[str, Any]:
    """A YAML config file as a dict; InputError naming the file if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        packaged = _config_dir() / (path.name if path.name.endswith(".yaml") else f"{path.name}.yaml")
        if str(path.parent) != "." or not packaged.is_file():
            near = difflib.get_close_matches(path.stem.lower().replace("-", "_"), config_names(), n=1, cutoff=0.75)
            hint = f"did you mean {near[0]}? " if near and str(path.parent) == "." else ""
            raise InputError(
                f"config {str(path)!r} not found: {hint}give a YAML path or one of {', '.join(config_names())}"
            )
        path = packaged  # type: ignore[assignment]
    try:
        data = yaml.load(path.read_text(), _Loader) or {}
    except yaml.YAMLError as e:
        raise InputError(f"config {str(path)!r} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {str(path)!r} must be a mapping of keys to values")
    return data


def parse_overrides(args: Sequence[str]) -> Dict[str, Any]:
    """`--key value`, `--key=value` or `key=value` pairs (dashes or underscores; values parsed as YAML)."""
    out: Dict[str, Any] = {}
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" not in arg:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                key, value = arg[2:], "true"  # a bare flag
            else:
                key, value = arg[2:], args[i + 1]
                i += 1
        elif "=" in arg:
            key, value = arg.lstrip("-").split("=", 1)
        else:
            raise InputError(f"cannot read {arg!r}: overrides look like --key value, --key=value or key=value")
        try:
            out[key.replace("-", "_")] = yaml.load(value, _Loader)
        except yaml.YAMLError as e:
            raise InputError(
                f"--{key.replace('_', '-')} {value!r} is not valid YAML ({yaml_problem(e)}): write it as in a YAML "
                "file, e.g. '{embed_dim: 128}' or '[0.5, 0.5, 0.5]', quoted for the shell"
            ) from None
        i += 1
    return out


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what the parser found and where, without the quoted source."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = f" {error.context}" if error.context else ""
        return f"{error.problem}{context}{where}"
    return " ".join(str(error).split())


def resolve_config(config_file: Optional[Path] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """DEFAULTS, then the YAML file, then the overrides, each value checked against its key's rule; unknown keys are
    an InputError naming close ones. A mapping (model_kwargs, dense_kwargs) merges into the one before it key by key
    (a key set to null is removed), except model_kwargs beside another `model`, which replaces it. The config a run
    directory saved works as one (its resume history left out)."""
    return _resolve(config_file, overrides)[0]


def value_sources(config_file: Optional[Path] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Where `resolve_config` took each value from ("the defaults", "config 'NAME'", "the command line"), by key,
    and by "key.inner" for each key of a mapping."""
    return _resolve(config_file, overrides)[1]


def _resolve(config_file: Optional[Path], overrides: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    cfg = copy.deepcopy(DEFAULTS)
    sources = {key: "the defaults" for key in cfg}
    layers: List[tuple] = []
    overrides = overrides or {}
    if config_file is not None:
        stem = Path(config_file).stem
        own = load_yaml(Path(config_file))
        own.pop(HISTORY_KEY, None)
        layers.append((f"config {str(config_file)!r}", own))
        moved = own.get("data") not in (None, overrides.get("data", own.get("data")))
        cfg["name"] = f"{stem}-{data_tag(overrides['data'])}" if moved else stem  # run names follow the data
    layers.append(("the command line", overrides))
    for source, layer in layers:
        new_model = "model" in layer and layer["model"] != cfg["model"]
        for key, value in layer.items():
            value = check_value(_known(key, source), value, source)
            if isinstance(value, dict):  # a mapping: merged into the one before, unless made for another model
                before = {} if key == "model_kwargs" and new_model else cfg[key]
                value = {k: v for k, v in {**before, **value}.items() if v is not None}
                sources.update({f"{key}.{inner}": source for inner in layer[key]})
            cfg[key], sources[key] = value, source
    return cfg, sources


class ConfigError(InputError):
    """An InputError about the values of config keys `keys`; the command line adds where each came from."""

    def __init__(self, message: str, keys: Sequence[str]) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


def describe_sources(keys: Sequence[str], cfg: Dict[str, Any], sources: Dict[str, str]) -> str:
    """Where the values of `keys` came from, grouped by source: "img_size, model_kwargs.depth from config 'digits';
    model_kwargs.embed_dim from the command line" (each key of a mapping on its own)."""
    by_source: Dict[str, List[str]] = {}
    for key in keys:
        named = [f"{key}.{inner}" for inner in cfg.get(key) or {}] if isinstance(cfg.get(key), dict) else [key]
        for name in named:
            by_source.setdefault(sources.get(name, sources.get(key, "the defaults")), []).append(name)
    return "; ".join(f"{', '.join(names)} from {source}" for source, names in by_source.items())


def data_tag(spec: Any) -> str:
    """A short name for a `--data` spec, for run names: digits, fashion-mnist, cifar10, an ImageFolder's name."""
    kind, sep, rest = str(spec).partition(":")
    if sep and "/" not in kind:
        return kind
    return Path(str(spec).rstrip("/")).name.replace(":", "_") or "data"


def save_config(cfg: Dict[str, Any], path: Path, history: Optional[List[Dict[str, Any]]] = None) -> None:
    """Write the config in effect, with the resume history under `resumes` (each resume's position and changes)."""
    out = dict(cfg, **({HISTORY_KEY: history} if history else {}))
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    try:
        tmp.write_text(yaml.safe_dump(out, sort_keys=False))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = "no free space left there: free space, or choose another --output" if full else e.strerror or str(e)
        raise InputError(f"cannot write {str(path)!r} ({fix})") from None


def read_history(path: Path) -> List[Dict[str, Any]]:
    """The resume history a run directory's saved config holds (empty if none)."""
    try:
        data = yaml.load(Path(path).read_text(), _Loader) if Path(path).is_file() else None
    except yaml.YAMLError:
        return []
    return list(data.get(HISTORY_KEY) or []) if isinstance(data, dict) else []
