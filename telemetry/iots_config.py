"""`iots-right.json`: the IoT appliances the portal polls over HTTP, and how their values are kept.

Pure functions, no I/O. `parse_iots_config` refuses a file as a whole, naming every problem by its
JSON path (`$.resources.iots[1].store.type`); `pick` reads one value out of an appliance's JSON
answer by its `tag`; `aggregate` folds the values polled during `store.period` into the one that
is stored, as `store.type` says.

Every key shown in the format's example is required; keys it does not know are ignored.
"""

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from urllib.parse import urlsplit

from devices.storable_text import is_storable

STORE_TYPES = ("avg", "sum", "last", "consumption")
DATA_TYPES = ("DOUBLE", "FLOAT", "INTEGER", "LONG", "BOOLEAN")

_TAG = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")  # dot-separated keys, none empty, no spaces


class IotsConfigError(Exception):
    """The file is refused; `problems` lists (JSON path, what is wrong) for each problem."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        listed = "; ".join(f"{path}: {message}" for path, message in problems)
        super().__init__(f"iots-right.json refused ({len(problems)} problems): {listed}")


@dataclass(frozen=True)
class ValueSpec:
    """One value of an appliance: what it measures, where in the answer it is, its unit."""

    type: str
    tag: str
    data: str
    unit: str


@dataclass(frozen=True)
class Appliance:
    name: str
    type: str
    uri: str
    values: list[ValueSpec]
    demand_response: bool
    store_period: int
    store_type: str


@dataclass(frozen=True)
class IotsConfig:
    monitoring: bool
    dr_auto_accept: bool
    monitoring_period: int
    iots: list[Appliance]


def parse_iots_config(data: bytes | str | dict) -> IotsConfig:
    """The config in `data` (the file's bytes or text, or an already decoded object).

    Raises `IotsConfigError` naming every problem when anything is wrong: the file is used whole
    or not at all. `data` names of value specs are given back in upper case.
    """
    document = data if isinstance(data, dict) else _decode(data)
    check = _Checker()
    check.storable(document)
    root = check.object(document, "$")
    app = check.field(root, "$", "app", check.object)
    monitoring = check.field(app, "$.app", "monitoring", check.boolean)
    dr_auto_accept = check.field(app, "$.app", "dr_events_auto_accept", check.boolean)
    resources = check.field(root, "$", "resources", check.object)
    monitoring_period = check.field(resources, "$.resources", "monitoring_period", check.period)
    items = check.field(resources, "$.resources", "iots", check.array)

    names: dict[str, str] = {}
    iots = [
        _appliance(check, item, f"$.resources.iots[{index}]", monitoring_period, names)
        for index, item in enumerate(items or ())
    ]
    if check.problems:
        raise IotsConfigError(check.problems)
    return IotsConfig(
        monitoring=monitoring,
        dr_auto_accept=dr_auto_accept,
        monitoring_period=monitoring_period,
        iots=iots,
    )


def pick(tag: str, document: object, *, data: str = "DOUBLE") -> float | None:
    """The finite number at dot path `tag` in `document`, or None if there is none.

    A key made of digits indexes a list (`data.phases.0.power`). JSON booleans count as
    1.0 / 0.0 only for values declared `BOOLEAN`; strings, nulls, NaN and infinities are None.
    """
    node = document
    for key in tag.split("."):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isascii() and key.isdecimal() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    if isinstance(node, bool):
        return float(node) if data == "BOOLEAN" else None
    if not isinstance(node, int | float):
        return None
    try:
        value = float(node)
    except OverflowError:  # an integer beyond float range
        return None
    return value if math.isfinite(value) else None


def aggregate(store_type: str, samples: Sequence[float]) -> float | None:
    """The value stored for one `store.period` from the `samples` polled in it, oldest first.

    `avg`, `sum` and `last` are what they say; None when there are no samples. `consumption` is
    last minus first of a counter: None with fewer than 2 samples, and None when the counter went
    down anywhere in the period (a reset or a replaced meter), since the real use is then unknown
    and a negative or too small figure would be wrong.
    """
    if store_type not in STORE_TYPES:
        raise ValueError(f"store type {store_type!r} is not one of {', '.join(STORE_TYPES)}")
    if not samples:
        return None
    if store_type == "avg":
        return math.fsum(samples) / len(samples)
    if store_type == "sum":
        return math.fsum(samples)
    if store_type == "last":
        return samples[-1]
    if len(samples) < 2 or any(later < earlier for earlier, later in pairwise(samples)):
        return None
    return samples[-1] - samples[0]


class _Object(dict):
    """A decoded JSON object that remembers keys given twice (json silently keeps the last)."""

    repeated_keys: tuple[str, ...] = ()


def _object_from_pairs(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        obj.repeated_keys = tuple(key for key, count in counts.items() if count > 1)
    return obj


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range
        return False
    return port_ok and parts.scheme in ("http", "https") and bool(parts.hostname)


def _decode(data: bytes | str) -> object:
    try:
        return json.loads(data, object_pairs_hook=_object_from_pairs)
    except UnicodeDecodeError:
        raise IotsConfigError([("$", "the file is not UTF-8 text; save it as UTF-8")]) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise IotsConfigError([("$", f"invalid JSON at {where}: {exc.msg}")]) from None
    except RecursionError:
        raise IotsConfigError([("$", "the JSON is nested too deeply to read")]) from None


def _shown(value: object) -> str:
    """A value as the file would spell it, kept short for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    """Collects problems; each check returns the checked value, or None after noting a problem."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def storable(self, document: object) -> None:
        """Every key and string in the document must be text PostgreSQL can store: names, units
        and tags are saved as they are. Walked with a stack, as documents may nest deeply."""
        stack = [("$", document)]
        while stack:
            path, node = stack.pop()
            if isinstance(node, str) and not is_storable(node):
                self.problem(path, "holds a NUL character or a lone surrogate (\\u0000, \\ud800)")
            elif isinstance(node, dict):
                for key, value in reversed(node.items()):
                    if not is_storable(key):
                        self.problem(path, "has a key holding a NUL character or a lone surrogate")
                    else:
                        stack.append((f"{path}.{key}", value))
            elif isinstance(node, list):
                stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(node))))

    def field(
        self, parent: dict | None, path: str, key: str, check: Callable[[object, str], object]
    ):
        """`parent[key]` checked; a missing parent was already reported, so it is not again."""
        if parent is None:
            return None
        if key not in parent:
            self.problem(f"{path}.{key}", "is required but missing")
            return None
        return check(parent[key], f"{path}.{key}")

    def object(self, value: object, path: str) -> dict | None:
        if not isinstance(value, dict):
            self.problem(path, f"must be an object {{...}}, not {_shown(value)}")
            return None
        for key in getattr(value, "repeated_keys", ()):
            self.problem(f"{path}.{key}", "is given more than once; keep one")
        return value

    def array(self, value: object, path: str) -> list | None:
        if not isinstance(value, list):
            self.problem(path, f"must be a list [...], not {_shown(value)}")
            return None
        return value

    def boolean(self, value: object, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false, not {_shown(value)}")
            return None
        return value

    def text(self, value: object, path: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(path, f"must be a non-empty string, not {_shown(value)}")
            return None
        return value

    def unit(self, value: object, path: str) -> str | None:
        if not isinstance(value, str):
            self.problem(
                path, f'must be a string ("" when the value has no unit), not {_shown(value)}'
            )
            return None
        return value

    def period(self, value: object, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.problem(path, f"must be a positive whole number, not {_shown(value)}")
            return None
        return value

    def url(self, value: object, path: str) -> str | None:
        if not _is_http_url(value):
            self.problem(
                path,
                f"must be an http:// or https:// URL such as http://10.0.0.5:30000/api/AC1, "
                f"not {_shown(value)}",
            )
            return None
        return value

    def store_type(self, value: object, path: str) -> str | None:
        if value not in STORE_TYPES:
            self.problem(path, f"must be one of {', '.join(STORE_TYPES)}, not {_shown(value)}")
            return None
        return value

    def data_type(self, value: object, path: str) -> str | None:
        if not isinstance(value, str) or value.upper() not in DATA_TYPES:
            self.problem(path, f"must be one of {', '.join(DATA_TYPES)}, not {_shown(value)}")
            return None
        return value.upper()

    def tag(self, value: object, path: str) -> str | None:
        if not isinstance(value, str) or not _TAG.fullmatch(value):
            self.problem(
                path, f"must be a dot path into the answer such as data.power, not {_shown(value)}"
            )
            return None
        return value


def _appliance(
    check: _Checker, item: object, path: str, monitoring_period: int | None, names: dict[str, str]
) -> Appliance:
    """One appliance, checked; `names` maps the names seen so far to where they were."""
    obj = check.object(item, path)
    name = check.field(obj, path, "name", check.text)
    if name is not None:
        if name in names:
            check.problem(f"{path}.name", f"{_shown(name)} is already the name of {names[name]}")
        else:
            names[name] = path
    kind = check.field(obj, path, "type", check.text)
    uri = check.field(obj, path, "uri", check.url)
    values = _value_specs(check, obj, path)
    control = check.field(obj, path, "control", check.object)
    demand_response = check.field(control, f"{path}.control", "demandresponse", check.boolean)
    store = check.field(obj, path, "store", check.object)
    store_period = check.field(store, f"{path}.store", "period", check.period)
    if None not in (store_period, monitoring_period) and store_period < monitoring_period:
        check.problem(
            f"{path}.store.period",
            f"{store_period} is shorter than $.resources.monitoring_period "
            f"({monitoring_period}); a stored value must span at least one poll",
        )
    store_type = check.field(store, f"{path}.store", "type", check.store_type)
    return Appliance(
        name=name,
        type=kind,
        uri=uri,
        values=values,
        demand_response=demand_response,
        store_period=store_period,
        store_type=store_type,
    )


def _value_specs(check: _Checker, appliance: dict | None, path: str) -> list[ValueSpec]:
    items = check.field(appliance, path, "values", check.array)
    if items is not None and not items:
        check.problem(f"{path}.values", "is empty; list at least one value to read")
    specs = []
    types: dict[str, int] = {}
    for index, item in enumerate(items or ()):
        item_path = f"{path}.values[{index}]"
        obj = check.object(item, item_path)
        kind = check.field(obj, item_path, "type", check.text)
        if kind is not None:
            if kind in types:
                check.problem(
                    f"{item_path}.type",
                    f"{_shown(kind)} is already read by {path}.values[{types[kind]}]; "
                    "each value type once per appliance",
                )
            else:
                types[kind] = index
        specs.append(
            ValueSpec(
                type=kind,
                tag=check.field(obj, item_path, "tag", check.tag),
                data=check.field(obj, item_path, "data", check.data_type),
                unit=check.field(obj, item_path, "unit", check.unit),
            )
        )
    return specs
