"""The ingest fast path's SQL, derived from the pydantic schema (`autoretrain.runs.schema`).

The schema is the one definition of a good record. Ingest parses each line once inside DuckDB
(`json_transform` into the shape of a `Run`, every leaf kept as JSON text, so a leaf's kind is
its first character) and tests a conjunction that this module builds by walking the models'
fields, types and constraints. That conjunction only ever *confirms*: it is stricter than
pydantic (a number given as a string, a missing field that has a default, an unusual timestamp
format are not proven here), and every line it cannot confirm is judged by pydantic itself
(`autoretrain.runs.validate`), which also words the reason. So the two can differ only in speed.

Known gap: a JSON object that repeats a key. DuckDB reads the first value, pydantic the last,
and no cheap check finds repeats at every level; such a line is confirmed on its first values
(so the typed columns the gates read are checked ones) and `RunStore.records()` skips it if
pydantic refuses its last values.

Anything in the schema this walker does not know — a new type, a constraint, a validator — is
an error at import time, not a silent gap: teach it here (or list a validator that only widens
what is accepted) in the same change. `autoretrain_tests/runs/test_ingest_schema.py` checks
over hundreds of corrupted records that every confirmed line is one pydantic accepts, with the
same column values.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import datetime
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from autoretrain.runs import schema
from autoretrain.runs.schema import Run

# pydantic's JSON parser refuses nesting deeper than 201 levels ("recursion limit exceeded"),
# and DuckDB's does not. A line with at most this many `{` and `[` (counted in the reader
# thread, strings included) cannot be that deep; a line with more is judged by pydantic.
MAX_BRACKETS = 200

# DuckDB's JSON reader accepts what pydantic's does not: trailing commas, and `nan`/`inf`
# literals. A line that might hold one (the pattern also hits such text inside a string, which
# only costs that line the slow path) is judged by pydantic.
LENIENT_JSON = r",\s*[}\]]|[:\[,]\s*[-+]?(?i:nan|inf|infinity)\s*[,}\]]"

# An ISO 8601 time that DuckDB's TIMESTAMPTZ cast and pydantic read alike (a naive time is
# UTC for both), on a real calendar day (February 29 is left to pydantic) of 1971 to 9899, so
# that with any offset it is inside schema.EARLIEST..LATEST: the pattern alone proves a time,
# with no cast. Other spellings each side accepts (`infinity`, time zone names, 7 fractional
# digits, hour 24) are left to pydantic. Matched on the JSON text, quotes included.
TIMESTAMP_RE = (
    r'"(?:197[1-9]|19[89][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2})-'
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r'(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"'
)
assert schema.EARLIEST.year < 1971 and schema.LATEST.year > 9899  # what the pattern relies on

# Validators of the schema and what each means here. A validator that only widens what is
# accepted (coercion) needs no SQL: the fast path stays stricter. One that narrows needs its
# condition, as SQL over the model's struct `e`.
WIDENING = {"_arguments_as_string"}
MODEL_RULES = {
    "_ends_after_it_starts": (
        "({e}['ended_at'] IS NULL OR TRY_CAST({e}['ended_at'][2:-2] AS TIMESTAMPTZ) >= "
        "TRY_CAST({e}['started_at'][2:-2] AS TIMESTAMPTZ))"
    ),
}
# String patterns: RE2's `\S` is ASCII-only and pydantic's Unicode-aware, so a string proves
# "not blank" here by holding a visible ASCII character; others go to pydantic.
PATTERNS = {r"\S": "regexp_matches({x}, '[!-~]')"}

UNSURE = "unsure"  # placeholder problem: the line is judged by pydantic
# JSON numbers as the pattern proves them: up to 18 digits is a BIGINT for both sides; a
# float of at most 200 digits and a two-digit exponent is finite (the `1e999` that parses to
# infinity goes to pydantic).
INTEGER_RE = "[0-9]{1,18}"
FLOAT_RE = "[0-9]{1,200}(?:[.][0-9]{1,200})?(?:[eE][+-]?[0-9]{1,2})?"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def unquote(leaf: str) -> str:
    """A JSON string leaf as SQL text. DuckDB's writer turns `\\u` escapes into characters, so
    most leaves hold no backslash and only lose their quotes."""
    return f"CASE WHEN contains({leaf}, '\\') THEN {leaf} ->> '$' ELSE {leaf}[2:-2] END"


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, bool, list[Any]]:
    """(base type, nullable, constraints) of a field's annotation."""
    meta = list(metadata)
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                meta += item.metadata if isinstance(item, FieldInfo) else [item]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"rules.py cannot check the union {annotation}")
            nullable = True
            annotation = args[0]
        else:
            return annotation, nullable, meta


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_container(t: Any) -> bool:
    return _is_model(t) or typing.get_origin(t) is list


def shape(t: Any) -> Any:
    """The `json_transform` structure for type t: leaves as JSON text."""
    if _is_model(t):
        out = {}
        for name, fi in t.model_fields.items():
            base, nullable, _ = _unwrap(fi.annotation, fi.metadata)
            # A nullable container is read as JSON and transformed on its own: json_transform
            # answers a wrongly typed list with NULL, which would pass for "absent".
            out[name] = "JSON" if nullable and _is_container(base) else shape(base)
        return out
    if typing.get_origin(t) is list:
        return [shape(typing.get_args(t)[0])]
    return "JSON"


class _Namer:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"x{self.n}"


def _field(fi: FieldInfo, e: str, names: _Namer) -> str:
    base, nullable, meta = _unwrap(fi.annotation, fi.metadata)
    if nullable and _is_container(base):
        opens = "'{'" if _is_model(base) else "'['"
        inner = f"json_transform({e}, {_sql_str(json.dumps(shape(base)))})"
        return (
            f"({e} IS NULL OR (starts_with({e}, {opens}) AND {_value(base, meta, inner, names)}))"
        )
    if nullable:  # JSON null and an absent key both read as NULL; both are None to pydantic
        return f"({e} IS NULL OR {_value(base, meta, e, names)})"
    if _static_default(fi) and not _is_container(base):
        # NULL is an absent key (the default applies) or a null (refused): a plain line has no
        # `"<this key>": null` (NULL_FOR_DEFAULT, in the reader's one pass over the bytes).
        DEFAULTED.add(e.rsplit("['", 1)[1].removesuffix("']"))
        return f"({e} IS NULL OR {_value(base, meta, e, names)})"
    # Not nullable, no fixed default: NULL is a null or a missing key or, for a list, a wrong
    # type; a default made when read (a time) is not proven here either. All go to pydantic.
    # (A NULL leaf fails without asking: the conjunction is coalesced to FALSE; a NULL list
    # would pass as empty, so it is asked.)
    value = _value(base, meta, e, names)
    return f"({e} IS NOT NULL AND {value})" if typing.get_origin(base) is list else value


DEFAULTED: set[str] = set()  # keys of leaves with a fixed default, filled by the walk


def _static_default(fi: FieldInfo) -> bool:
    return fi.default_factory is None and not fi.is_required()


def _bounds(meta: list[Any], value: str, implied: tuple[Any, ...] = ()) -> list[str]:
    out = []
    for m in meta:
        if m in implied:
            continue
        if isinstance(m, at.Ge):
            out.append(f"{value} >= {m.ge}")
        elif isinstance(m, at.Gt):
            out.append(f"{value} > {m.gt}")
        elif isinstance(m, at.Le):
            out.append(f"{value} <= {m.le}")
        elif isinstance(m, at.Lt):
            out.append(f"{value} < {m.lt}")
    return out


def _value(t: Any, meta: list[Any], e: str, names: _Namer) -> str:
    """SQL that holds only if the (non-NULL) value e is one pydantic accepts for type t."""
    known = (at.Ge, at.Gt, at.Le, at.Lt)
    for m in meta:
        pattern = getattr(m, "pattern", None)
        finite = getattr(m, "allow_inf_nan", None) is False
        validator = isinstance(m, AfterValidator) and m.func is schema._in_range
        if not (isinstance(m, known) or pattern in PATTERNS or finite or validator):
            raise TypeError(f"rules.py does not know the constraint {m!r}: add its SQL here")
    if _is_model(t):
        return _model(t, e, names)
    origin = typing.get_origin(t)
    if origin is list:
        (item,) = typing.get_args(t)
        x = names()
        cond = _value(*_unwrap(item, [])[::2], x, names)
        return (
            f"coalesce(list_bool_and(list_transform({e}, lambda {x}: coalesce({cond}, FALSE))), "
            "TRUE)"
        )
    if origin is dict:
        key, val = typing.get_args(t)
        if key is not str or val not in (Any, str):
            raise TypeError(f"rules.py cannot check {t}")
        if val is str:
            return (
                f"(starts_with({e}, '{{') AND ({e} = '{{}}' OR "
                f"coalesce(list_bool_and(list_transform(json_type({e}, '$.*'), "
                "lambda v: v = 'VARCHAR')), FALSE)))"
            )
        return f"starts_with({e}, '{{')"
    if origin is Literal:
        choices = ", ".join(_sql_str(json.dumps(v)) for v in typing.get_args(t))
        return f"{e} IN ({choices})"
    if t is bool:
        return f"{e} IN ('true', 'false')"
    if t is str:
        out = [f"starts_with({e}, '\"')"]
        out += [
            PATTERNS[m.pattern].format(x=unquote(e)) for m in meta if getattr(m, "pattern", None)
        ]
        return "(" + " AND ".join(out) + ")"
    if t in (int, float):
        # A lower bound of 0 is the pattern without a sign, and 18 digits fit a BIGINT; other
        # bounds are compared. Floats are always finite here, whatever the field allows.
        unsigned = [m for m in meta if isinstance(m, at.Ge) and m.ge == 0]
        implied = tuple(unsigned) + tuple(
            m for m in meta if t is int and isinstance(m, at.Le) and m.le >= 10**18 - 1
        )
        pattern = ("" if unsigned else "-?") + (INTEGER_RE if t is int else FLOAT_RE)
        cast = f"TRY_CAST({e} AS {'BIGINT' if t is int else 'DOUBLE'})"
        out = [f"regexp_full_match({e}, '{pattern}')"]
        return "(" + " AND ".join(out + _bounds(meta, cast, implied)) + ")"
    if t is datetime:
        # The pattern proves a real time inside schema.EARLIEST..LATEST (see TIMESTAMP_RE).
        return f"regexp_full_match({e}, {_sql_str(TIMESTAMP_RE)})"
    if t is Any:
        return "TRUE"
    raise TypeError(f"rules.py cannot check the type {t}: add it here")


def _model(model: type[BaseModel], e: str, names: _Namer) -> str:
    decorators = model.__pydantic_decorators__
    for name in decorators.field_validators:
        if name not in WIDENING:
            raise TypeError(f"{model.__name__}.{name}: say in rules.py what it means in SQL")
    rules = []
    for name in decorators.model_validators:
        if name not in MODEL_RULES:
            raise TypeError(f"{model.__name__}.{name}: add its SQL to rules.MODEL_RULES")
        rules.append(MODEL_RULES[name].format(e=e))
    fields = model.model_fields
    conds = [_field(fi, f"{e}['{name}']", names) for name, fi in fields.items()]
    anchored = any(
        fi.is_required() and not _unwrap(fi.annotation, fi.metadata)[1] for fi in fields.values()
    )
    if not anchored:
        # A non-object in a struct's place reads as a struct of NULL leaves, as does an object
        # of none of the model's keys; with no required leaf to fail on, one key present
        # proves an object.
        conds.insert(0, "(" + " OR ".join(f"{e}['{name}'] IS NOT NULL" for name in fields) + ")")
    return "(" + " AND ".join(conds + rules) + ")"


SHAPE = shape(Run)
CONFIRMED = _model(Run, "r", _Namer())

# A line is plain (the fast path may confirm it) when none of these can match: JSON only
# DuckDB takes (LENIENT_JSON), a null given for a key with a fixed default (which the fast path
# reads as absent), or a key spelled with an escape (`"\u0061gent"`), which that pattern cannot
# see. Text inside strings can match too; that only sends the line to pydantic. One regular
# expression, so the reader makes one pass over the bytes.
NULL_FOR_DEFAULT = r'"(?:' + "|".join(sorted(DEFAULTED)) + r')"\s*:\s*null'
ESCAPED_KEY = r'\\.(?:[^"\\]|\\.)*"\s*:'
NOT_PLAIN = "|".join([LENIENT_JSON, NULL_FOR_DEFAULT, ESCAPED_KEY])


def fast_sql(source: str, trusted: bool = False) -> str:
    """One row per non-blank line of `source` (file_idx, line, text, last, plain): `problem` is
    NULL for a confirmed record and UNSURE for every other line, plus the columns of the `runs`
    table. `trusted`: the lines are pydantic's own serialisation of records it accepted; only
    the columns are wanted."""
    text = {name: unquote(f"r['{name}']") for name in SHAPE}
    verdict = (
        "NULL"
        if trusted
        else f"CASE WHEN plain AND coalesce({CONFIRMED}, FALSE) THEN NULL ELSE '{UNSURE}' END"
    )
    defaults = {
        name: _sql_str(str(Run.model_fields[name].default))
        for name in ("workflow", "agent_version", "provider", "model", "traffic", "status")
    }
    return f"""
    WITH lines AS (
      SELECT * FROM {source}
      WHERE starts_with(text, '{{') OR length(trim(text, ' ' || chr(9) || chr(13))) > 0
    ), shaped AS (
      SELECT *, CASE WHEN starts_with(text, '{{') AND json_valid(text)
                     THEN json_transform(text, {_sql_str(json.dumps(SHAPE))}) END AS r
      FROM lines
    )
    SELECT
      file_idx, line, last,
      {verdict} AS problem,
      TRY_CAST(r['schema_version'] AS INTEGER) AS seen_version,
      {text["run_id"]} AS run_id,
      coalesce(TRY_CAST(r['schema_version'] AS INTEGER), {schema.SCHEMA_VERSION}) AS schema_version,
      {text["scenario_id"]} AS scenario_id,
      {text["instance_hash"]} AS instance_hash,
      {text["category"]} AS category,
      {", ".join(f"coalesce({text[n]}, {d}) AS {n}" for n, d in defaults.items())},
      {text["slot"]} AS slot,
      TRY_CAST(r['started_at'][2:-2] AS TIMESTAMPTZ) AS started_at,
      TRY_CAST(r['ended_at'][2:-2] AS TIMESTAMPTZ) AS ended_at,
      TRY_CAST(r['latency_s'] AS DOUBLE) AS latency_s,
      TRY_CAST(r['cost_usd'] AS DOUBLE) AS cost_usd,
      coalesce(TRY_CAST(r['usage']['prompt_tokens'] AS BIGINT), 0) AS prompt_tokens,
      coalesce(TRY_CAST(r['usage']['completion_tokens'] AS BIGINT), 0) AS completion_tokens,
      coalesce(len(r['messages']), 0)::INTEGER AS n_messages,
      coalesce(len(r['recoveries']), 0)::INTEGER AS n_recoveries,
      coalesce(len(r['escalations']), 0)::INTEGER AS n_escalations,
      coalesce(r['verifications'][-1]['passed'] = 'true', FALSE) AS verified,
      TRY_CAST(r['verifications'][-1]['score'] AS DOUBLE) AS score,
      r['events'] AS events
    FROM shaped
    """
