"""Reading landing-zone files into checked, typed rows, with the heavy lifting inside DuckDB.

Python only cuts each file into bounded chunks of whole lines (bytes, so memory does not grow
with the size of a file or a day) and catches what DuckDB cannot be handed: bytes that are not
UTF-8 and lines over `ingest.max_record_bytes`. Everything else — JSON validity, "is it an
object", the type of every field of `Run`, enum values, timestamps, defaults, the columns of
the `runs` table — is SQL over an Arrow table of lines: `fast_sql` confirms the ordinary
records with one parse each, and `checked_sql` judges the rest field by field and says why.

The checks below mirror `autoretrain.runs.schema.Run` (the pydantic model is the definition).
`autoretrain_tests/runs/test_ingest_schema.py` checks, over ~330 corrupted variants, that every
record the store accepts loads as a `Run` and every record pydantic rejects is quarantined (the
SQL is stricter than pydantic's lax mode in a few places: numbers given as strings are
quarantined, not coerced), and that the fast path confirms only what the full checks accept.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from autoretrain.runs.schema import KNOWN_SCHEMA_VERSIONS, SCHEMA_VERSION

RAW_CHARS = 1000  # quarantine keeps this much of a bad line


@dataclass
class Rejected:
    """A line turned away before SQL (bytes-level problems)."""

    line: int
    reason: str
    raw: str


@dataclass
class Chunk:
    """Whole lines of one file: `table` has columns line (1-based), text, last (no newline)."""

    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)
    nbytes: int = 0


def read_chunks(path: Path, max_record_bytes: int, chunk_bytes: int) -> Iterator[Chunk]:
    """Yield a file as chunks of whole lines; a line never spans two chunks.

    Memory stays near `chunk_bytes` plus one line, and a line longer than `max_record_bytes`
    is skipped while streaming (only its first bytes are kept, for the quarantine).
    """
    line_no = 0  # lines completed before `carry`
    carry = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            data = carry + block if carry else block
            cut = data.rfind(b"\n")
            if cut == -1:
                if len(data) > max_record_bytes:
                    line_no += 1
                    rejected, carry = _skip_long_line(fh, data, line_no, chunk_bytes)
                    yield Chunk(_lines_table([], line_no), [rejected], nbytes=len(data))
                else:
                    carry = data
                continue
            body, carry = data[:cut], data[cut + 1 :]
            chunk = _chunk(body, line_no, last=False, max_record_bytes=max_record_bytes)
            line_no += len(chunk.table) + len(chunk.rejected)
            yield chunk
    if carry:
        yield _chunk(carry, line_no, last=True, max_record_bytes=max_record_bytes)


def read_files(
    paths: Sequence[Path], max_record_bytes: int, chunk_bytes: int, ahead: int = 2
) -> Iterator[tuple[int, Chunk | None]]:
    """(file index, chunk) for every chunk of every file, in order; None for an empty file.

    A thread reads and splits up to `ahead` chunks ahead (file reads and Arrow kernels release
    the GIL), so the next chunk is ready while DuckDB works on this one."""
    out: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for idx, path in enumerate(paths):
                if path.stat().st_size == 0:
                    if not put((idx, None)):
                        return
                    continue
                for chunk in read_chunks(path, max_record_bytes, chunk_bytes):
                    if not put((idx, chunk)):
                        return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, name="ingest-reader", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _skip_long_line(fh, head: bytes, line_no: int, chunk_bytes: int) -> tuple[Rejected, bytes]:  # type: ignore[no-untyped-def]
    size = len(head)
    while True:
        block = fh.read(chunk_bytes)
        if not block:
            rest = b""
            break
        cut = block.find(b"\n")
        if cut != -1:
            size += cut
            rest = block[cut + 1 :]
            break
        size += len(block)
    reason = f"record too large: {size} bytes, over ingest.max_record_bytes"
    return Rejected(line_no, reason, _preview(head)), rest


def _preview(raw: bytes) -> str:
    return raw[: RAW_CHARS * 4].decode("utf-8", errors="replace")[:RAW_CHARS]


def _lines_table(texts: list[str] | pa.Array, first: int, last: bool = False) -> pa.Table:
    n = len(texts)
    numbers = pa.array(range(first + 1, first + n + 1), pa.int64())
    flags = pa.array([last and i == n - 1 for i in range(n)], pa.bool_()) if last else None
    return pa.table(
        {
            "line": numbers,
            "text": texts if isinstance(texts, pa.Array) else pa.array(texts, pa.large_string()),
            "last": flags if flags is not None else pa.nulls(n, pa.bool_()).fill_null(False),
        }
    )


def _chunk(body: bytes, before: int, last: bool, max_record_bytes: int) -> Chunk:
    lines = pc.split_pattern(pa.array([body], pa.large_binary()), b"\n").flatten()
    numbers = pa.array(range(before + 1, before + len(lines) + 1), pa.int64())
    rejected: list[Rejected] = []
    keep = pc.less_equal(pc.binary_length(lines), max_record_bytes)
    if not pc.all(keep).as_py():
        for i in pc.indices_nonzero(pc.invert(keep)).to_pylist():
            raw = lines[i].as_py()
            reason = f"record too large: {len(raw)} bytes, over ingest.max_record_bytes ({max_record_bytes})"
            rejected.append(Rejected(before + 1 + i, reason, _preview(raw)))
    try:
        texts = lines.cast(pa.large_string())
    except pa.ArrowInvalid:
        texts, bad = _decode_each(lines)
        for i, reason in bad:
            if keep[i].as_py():
                rejected.append(Rejected(before + 1 + i, reason, _preview(lines[i].as_py())))
        keep = pc.and_(keep, pc.is_valid(texts))
    flags = pa.array([last and i == len(lines) - 1 for i in range(len(lines))], pa.bool_())
    table = pa.table({"line": numbers, "text": texts, "last": flags}).filter(keep)
    return Chunk(table, rejected, nbytes=len(body) + (0 if last else 1))


def _decode_each(lines: pa.Array) -> tuple[pa.Array, list[tuple[int, str]]]:
    # Only a chunk that holds a bad byte comes here; decode line by line to say which.
    texts: list[str | None] = []
    bad: list[tuple[int, str]] = []
    for i, raw in enumerate(lines.to_pylist()):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            texts.append(None)
            bad.append((i, f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"))
    return pa.array(texts, pa.large_string()), bad


def json_error(text: str) -> str:
    """Python's json module names the spot; DuckDB's json_valid only says yes or no."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{exc.msg} at column {exc.colno}"
    except RecursionError:
        return "nested too deeply"
    return "not accepted by DuckDB's JSON parser"


# -- the checks, as SQL --------------------------------------------------------------------
# One parse per line extracts every top-level field as JSON text (`j_<field>`); a field's type
# is then read from its first character, which costs no further parsing. Nested arrays are
# checked on their own (small) extracted text. A cheap `ok` conjunction decides each line; the
# wording of the reasons is built only for the lines that fail.


@dataclass(frozen=True)
class FieldCheck:
    """kind: string | integer | number | array | object | timestamp. null: JSON null allowed.
    required: absent is an error (otherwise the model's default applies)."""

    name: str
    kind: str
    null: bool = False
    required: bool = False
    choices: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        return "j_" + self.name.replace(".", "_")


TRAFFIC = ("selfplay", "evaluation", "production", "import", "demo")
STATUS = ("succeeded", "failed", "escalated", "error", "running")
ROLES = ("system", "user", "assistant", "tool")

FIELDS: tuple[FieldCheck, ...] = (
    FieldCheck("run_id", "string", required=True),
    FieldCheck("schema_version", "integer"),
    FieldCheck("scenario_id", "string", null=True),
    FieldCheck("instance_hash", "string", null=True),
    FieldCheck("instance_seed", "integer", null=True),
    FieldCheck("category", "string", null=True),
    FieldCheck("workflow", "string"),
    FieldCheck("agent_version", "string"),
    FieldCheck("provider", "string"),
    FieldCheck("model", "string"),
    FieldCheck("slot", "string", null=True),
    FieldCheck("traffic", "string", choices=TRAFFIC),
    FieldCheck("status", "string", choices=STATUS),
    FieldCheck("started_at", "timestamp", required=True),
    FieldCheck("ended_at", "timestamp", null=True),
    FieldCheck("messages", "array"),
    FieldCheck("tools", "array"),
    FieldCheck("events", "array"),
    FieldCheck("verifications", "array"),
    FieldCheck("recoveries", "array"),
    FieldCheck("escalations", "array"),
    FieldCheck("final_answer", "string", null=True),
    FieldCheck("usage", "object"),
    FieldCheck("usage.prompt_tokens", "integer"),
    FieldCheck("usage.completion_tokens", "integer"),
    FieldCheck("latency_s", "number", null=True),
    FieldCheck("cost_usd", "number", null=True),
    FieldCheck("tags", "object"),
)
COL = {f.name: f.column for f in FIELDS}

MACROS = """
CREATE OR REPLACE TEMP MACRO jkind(j) AS CASE
  WHEN j IS NULL THEN 'missing' WHEN j = 'null' THEN 'null'
  WHEN j IN ('true', 'false') THEN 'boolean'
  WHEN starts_with(j, '"') THEN 'string' WHEN starts_with(j, '[') THEN 'array'
  WHEN starts_with(j, '{') THEN 'object'
  WHEN regexp_full_match(j, '-?[0-9]+') THEN 'integer' ELSE 'number' END;
CREATE OR REPLACE TEMP MACRO is_kind(j, kind) AS CASE kind
  WHEN 'string' THEN starts_with(j, '"') WHEN 'timestamp' THEN starts_with(j, '"')
  WHEN 'array' THEN starts_with(j, '[') WHEN 'object' THEN starts_with(j, '{')
  WHEN 'integer' THEN regexp_full_match(j, '-?[0-9]+')
  WHEN 'number' THEN left(j, 1) IN ('-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9')
  END;
CREATE OR REPLACE TEMP MACRO all_in(types, allowed) AS
  coalesce(list_bool_and(list_transform(types, lambda x: list_contains(allowed, x))), TRUE);
"""


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: tuple[str, ...] | frozenset[int] | list[int]) -> str:
    return "[" + ",".join(_sql_str(x) if isinstance(x, str) else str(x) for x in values) + "]"


def _text(name: str) -> str:
    """A field's value as SQL text (JSON strings unquoted); NULL when absent or null."""
    return f"({COL[name]} ->> '$')"


def _checks() -> list[tuple[str, str]]:
    """(condition that holds for a good record, reason when it does not) pairs."""
    out: list[tuple[str, str]] = []
    for f in FIELDS:
        j = f.column
        if f.required:
            out.append((f"{j} IS NOT NULL", f"'missing {f.name}'"))
        null_ok = f" OR {j} = 'null'" if f.null else ""
        out.append(
            (
                f"({j} IS NULL OR is_kind({j}, '{f.kind}'){null_ok})",
                f"'wrong type: {f.name} is ' || jkind({j}) || ', expected {f.kind}'",
            )
        )
        if f.choices:
            out.append(
                (
                    f"(NOT starts_with({j}, '\"') OR list_contains({_sql_list(f.choices)}, {_text(f.name)}))",
                    f"'invalid value: {f.name} ' || {j} || ' is not one of {'/'.join(f.choices)}'",
                )
            )
        if f.kind == "timestamp":
            out.append(
                (
                    f"(NOT starts_with({j}, '\"') OR TRY_CAST({_text(f.name)} AS TIMESTAMPTZ) IS NOT NULL)",
                    f"'invalid value: {f.name} ' || left({j}, 60) || ' is not a timestamp'",
                )
            )
    out.append(
        (
            f"(NOT starts_with({COL['run_id']}, '\"') OR trim({_text('run_id')}) <> '')",
            "'invalid value: run_id is empty'",
        )
    )
    known = sorted(KNOWN_SCHEMA_VERSIONS)
    out.append(
        (
            f"(NOT is_kind({COL['schema_version']}, 'integer') OR "
            f"list_contains({_sql_list(known)}, TRY_CAST({COL['schema_version']} AS HUGEINT)))",
            f"'unknown schema_version: ' || {COL['schema_version']} || "
            f"' (this version of autoretrain reads {known})'",
        )
    )
    return out + _nested_checks()


def _nested_checks() -> list[tuple[str, str]]:
    """Element checks for the arrays; each applies only when the array itself is an array."""
    string, integer = "['VARCHAR']", "['UBIGINT','BIGINT']"
    number = "['UBIGINT','BIGINT','DOUBLE']"
    obj, boolean = "['OBJECT']", "['BOOLEAN']"

    def when(name: str, cond: str, reason: str) -> tuple[str, str]:
        # An empty array (the usual recoveries and escalations) needs no parsing.
        j = COL[name]
        return (f"(NOT starts_with({j}, '[') OR {j} = '[]' OR ({cond}))", _sql_str(reason))

    def each(name: str, path: str, allowed: str, required: bool = True) -> str:
        types = f"json_type({COL[name]}, '$[*].{path}')"
        present = f"len({types}) = json_array_length({COL[name]}) AND " if required else ""
        return f"({present}all_in({types}, {allowed}))"

    m = COL["messages"]
    # Messages hold most of a record's bytes, so they are parsed three times, not once per
    # question: role values, content types, and each message's (small) tool_calls text.
    roles = f"json_extract_string({m}, '$[*].role')"
    tool_lists = f"json_extract({m}, '$[*].tool_calls')"
    calls_ok = (
        "len(json_type(a, '$[*].id')) = json_array_length(a) AND "
        "len(json_type(a, '$[*].function.name')) = json_array_length(a) AND "
        f"all_in(json_type(a, '$[*].id'), {string}) AND "
        f"all_in(json_type(a, '$[*].function.name'), {string})"
    )
    scores = f"json_extract({COL['verifications']}, '$[*].score')"
    tags = COL["tags"]
    tool_types, tag_types = f"json_type({COL['tools']}, '$[*]')", f"json_type({tags}, '$.*')"
    return [
        when(
            "messages",
            # A non-string role, or a message that is not an object, fails one of the two.
            f"len({roles}) = json_array_length({m}) AND all_in({roles}, {_sql_list(ROLES)})",
            f"invalid value: a message is not an object with a role of {'/'.join(ROLES)}",
        ),
        when(
            "messages",
            each("messages", "content", "['VARCHAR','NULL']", required=False),
            "wrong type: a message content is not a string or null",
        ),
        when(
            "messages",
            f"coalesce(list_bool_and(list_transform({tool_lists}, lambda a: a = 'null' OR "
            f"(starts_with(a, '[') AND ({calls_ok})))), TRUE)",
            "wrong type: a message tool_calls is not a list of calls with a string id and "
            "function.name",
        ),
        when("tools", f"all_in({tool_types}, {obj})", "wrong type: a tool is not an object"),
        (
            f"(NOT starts_with({tags}, '{{') OR {tags} = '{{}}' OR all_in({tag_types}, {string}))",
            "'wrong type: a tag value is not a string'",
        ),
        when("events", each("events", "type", string), "wrong type: an event lacks a string type"),
        when(
            "events",
            f"coalesce(list_bool_and(list_transform(json_extract_string({COL['events']}, '$[*].at'), "
            "lambda x: TRY_CAST(x AS TIMESTAMPTZ) IS NOT NULL)), TRUE) AND "
            f"{each('events', 'payload', obj, required=False)}",
            "wrong type: an event at is not a timestamp or its payload not an object",
        ),
        when(
            "verifications",
            f"{each('verifications', 'passed', boolean)} AND "
            f"{each('verifications', 'verifier', string)} AND {each('verifications', 'score', number)}",
            "wrong type: a verification lacks verifier (string), passed (boolean) or score (number)",
        ),
        when(
            "verifications",
            f"coalesce(list_bool_and(list_transform({scores}, lambda x: TRY_CAST(x AS DOUBLE) BETWEEN 0 AND 1)), TRUE)",
            "invalid value: a verification score is outside [0, 1]",
        ),
        when(
            "recoveries",
            f"{each('recoveries', 'attempt', integer)} AND {each('recoveries', 'reason', string)}",
            "wrong type: a recovery lacks attempt (integer) or reason (string)",
        ),
        when(
            "escalations",
            each("escalations", "reason", string),
            "wrong type: an escalation lacks a reason (string)",
        ),
    ]


NEEDS_DETAIL = "?"  # placeholder problem: the wording is filled in by `detail_sql`


def _checks_sql() -> list[tuple[str, str]]:
    # A check on an absent field compares with NULL; absent means "the default applies": pass.
    return [(f"coalesce({cond}, TRUE)", reason) for cond, reason in _checks()]


def _fields_sql(source: str) -> str:
    """CTEs `lines` (non-blank) and `fields` (one JSON parse; `j_<field>` columns)."""
    paths = _sql_list(["$." + f.name for f in FIELDS])
    unpack = ", ".join(f"v[{i + 1}] AS {f.column}" for i, f in enumerate(FIELDS))
    return f"""
    WITH lines AS (
      SELECT * FROM {source}
      WHERE starts_with(text, '{{') OR length(trim(text, ' ' || chr(9) || chr(13))) > 0
    ), parsed AS (
      SELECT *, json_valid(text) AS valid FROM lines
    ), fields AS (
      SELECT * EXCLUDE (v), v IS NOT NULL AS is_object, {unpack}
      FROM (SELECT *, CASE WHEN valid AND starts_with(ltrim(text), '{{')
                      THEN json_extract(text, {paths}) END AS v FROM parsed)
    )"""


def detail_sql(source: str) -> str:
    """Why each line of `source` (file_idx, line, text) failed, one reason per failed check;
    run only on the few lines `checked_sql` marked NEEDS_DETAIL."""
    reasons = ", ".join(f"CASE WHEN NOT ({c}) THEN {r} END" for c, r in _checks_sql())
    return (
        _fields_sql(source)
        + f"""
    SELECT file_idx, line,
      array_to_string(list_filter([{reasons}], lambda x: x IS NOT NULL), '; ') AS problem
    FROM fields"""
    )


def checked_sql(source: str) -> str:
    """One chunk of lines -> one row per non-blank line with `problem` (NULL when good) and
    the columns of the `runs` table. `source` is a relation with file_idx, line, text, last."""
    ok = " AND ".join(cond for cond, _ in _checks_sql())
    return (
        _fields_sql(source)
        + f""", judged AS (
      SELECT *,
        CASE
          WHEN NOT valid THEN 'invalid JSON'
          WHEN NOT is_object
            THEN 'not an object: the line is a JSON ' || jkind(json_extract(text, '$')::VARCHAR)
          WHEN {ok} THEN NULL
          ELSE '{NEEDS_DETAIL}'
        END AS problem
      FROM fields
    )
    SELECT
      file_idx, line, last, problem,
      CASE WHEN is_kind({COL["schema_version"]}, 'integer')
        THEN TRY_CAST({COL["schema_version"]} AS INTEGER) END AS seen_version,
      CASE WHEN problem IS NULL THEN {_text("run_id")} END AS run_id,
      coalesce(TRY_CAST({COL["schema_version"]} AS INTEGER), {SCHEMA_VERSION}) AS schema_version,
      {_text("scenario_id")} AS scenario_id,
      {_text("instance_hash")} AS instance_hash,
      {_text("category")} AS category,
      coalesce({_text("workflow")}, 'executor') AS workflow,
      coalesce({_text("agent_version")}, 'unknown') AS agent_version,
      coalesce({_text("provider")}, 'unknown') AS provider,
      coalesce({_text("model")}, 'unknown') AS model,
      {_text("slot")} AS slot,
      coalesce({_text("traffic")}, 'production') AS traffic,
      coalesce({_text("status")}, 'running') AS status,
      TRY_CAST({_text("started_at")} AS TIMESTAMPTZ) AS started_at,
      TRY_CAST({_text("ended_at")} AS TIMESTAMPTZ) AS ended_at,
      TRY_CAST({COL["latency_s"]} AS DOUBLE) AS latency_s,
      TRY_CAST({COL["cost_usd"]} AS DOUBLE) AS cost_usd,
      coalesce(TRY_CAST({COL["usage.prompt_tokens"]} AS BIGINT), 0) AS prompt_tokens,
      coalesce(TRY_CAST({COL["usage.completion_tokens"]} AS BIGINT), 0) AS completion_tokens,
      coalesce(json_array_length({COL["messages"]}), 0)::INTEGER AS n_messages,
      coalesce(json_array_length({COL["recoveries"]}), 0)::INTEGER AS n_recoveries,
      coalesce(json_array_length({COL["escalations"]}), 0)::INTEGER AS n_escalations,
      coalesce(TRY_CAST({COL["verifications"]} -> '$[#-1].passed' AS BOOLEAN), FALSE) AS verified,
      TRY_CAST({COL["verifications"]} -> '$[#-1].score' AS DOUBLE) AS score,
      CASE WHEN problem IS NULL THEN json_transform({COL["events"]}, {_sql_str(json.dumps([EVENT]))})
        END AS events
    FROM judged
    """
    )


# -- the fast path -------------------------------------------------------------------------
# `json_transform` parses a line once into the whole shape a run has, with every leaf kept as
# JSON text (so its kind is its first character). That one parse replaces the extraction and
# the nested re-parsing above, about halving the cost per line. It cannot tell a JSON null from
# an absent key, so it only *confirms* records that have every non-nullable field present with
# the right kind; anything else (a missing optional field, a null, a bad line) is marked UNSURE
# and goes through `checked_sql`, which gives the verdict and the reason. A confirmed line is
# one `checked_sql` accepts, with the same column values (autoretrain_tests/runs/
# test_ingest_schema.py compares the two paths row by row).

UNSURE = "unsure"  # placeholder problem: recheck the line with `checked_sql`

EVENT = {
    "type": "JSON",
    "agent": "VARCHAR",
    "at": "VARCHAR",
    "duration_s": "VARCHAR",
    "payload": "JSON",
}
SHAPE = {
    **{f.name: "JSON" for f in FIELDS if "." not in f.name},
    "messages": [{"role": "VARCHAR", "content": "JSON", "tool_calls": "JSON"}],
    "tools": ["JSON"],
    "events": [EVENT],
    "verifications": [{"verifier": "JSON", "passed": "JSON", "score": "JSON"}],
    "recoveries": [{"attempt": "JSON", "reason": "JSON"}],
    "escalations": [{"reason": "JSON"}],
    "usage": {"prompt_tokens": "JSON", "completion_tokens": "JSON"},
}


def _unquote(leaf: str) -> str:
    """A JSON string leaf as SQL text. The writer that made the leaf turns `\\u` escapes into
    characters, so most leaves hold no backslash and only lose their quotes."""
    return f"CASE WHEN contains({leaf}, '\\') THEN {leaf} ->> '$' ELSE {leaf}[2:-2] END"


def _is_string(leaf: str) -> str:
    return f"starts_with({leaf}, '\"')"


def _is_integer(leaf: str) -> str:
    # Up to 18 digits: within BIGINT, where json_type says BIGINT, as the SQL checks want.
    return f"regexp_full_match({leaf}, '-?[0-9]{{1,18}}')"


def _is_number(leaf: str) -> str:
    return f"left({leaf}, 1) IN ('-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9')"


def _each(items: str, cond: str) -> str:
    """Every element satisfies cond (x is the element); the list must be there (an absent or
    mistyped list comes back NULL from json_transform: UNSURE)."""
    return (
        f"({items} IS NOT NULL AND "
        f"coalesce(list_bool_and(list_transform({items}, lambda x: coalesce({cond}, FALSE))), TRUE))"
    )


def _confirmed() -> list[str]:
    """Conditions that together imply every check of `_checks` passes."""

    def optional(name: str, kind: str) -> str:
        return f"(r.{name} IS NULL OR {kind})"

    def quoted(values: tuple[str, ...]) -> str:
        return "(" + ", ".join(_sql_str(f'"{v}"') for v in values) + ")"

    known = ", ".join(_sql_str(str(v)) for v in sorted(KNOWN_SCHEMA_VERSIONS))
    calls = "x.tool_calls"
    calls_ok = (
        f"len(json_type({calls}, '$[*].id')) = json_array_length({calls}) AND "
        f"len(json_type({calls}, '$[*].function.name')) = json_array_length({calls}) AND "
        f"all_in(json_type({calls}, '$[*].id'), ['VARCHAR']) AND "
        f"all_in(json_type({calls}, '$[*].function.name'), ['VARCHAR'])"
    )
    message = (
        f"list_contains({_sql_list(ROLES)}, x.role) AND "
        f"(x.content IS NULL OR {_is_string('x.content')}) AND "
        f"({calls} IS NULL OR (starts_with({calls}, '[') AND {calls_ok}))"
    )
    event = (
        f"{_is_string('x.type')} AND TRY_CAST(x.at AS TIMESTAMPTZ) IS NOT NULL AND "
        "starts_with(x.payload, '{')"
    )
    verification = (
        f"x.passed IN ('true', 'false') AND {_is_string('x.verifier')} AND "
        f"{_is_number('x.score')} AND TRY_CAST(x.score AS DOUBLE) BETWEEN 0 AND 1"
    )
    return [
        f"{_is_string('r.run_id')} AND trim({_unquote('r.run_id')}) <> ''",
        f"r.schema_version IN ({known})",
        *(
            optional(name, _is_string(f"r.{name}"))
            for name in ("scenario_id", "instance_hash", "category", "slot", "final_answer")
        ),
        optional("instance_seed", _is_integer("r.instance_seed")),
        *(_is_string(f"r.{name}") for name in ("workflow", "agent_version", "provider", "model")),
        f"r.traffic IN {quoted(TRAFFIC)}",
        f"r.status IN {quoted(STATUS)}",
        f"{_is_string('r.started_at')} AND started_at IS NOT NULL",
        optional("ended_at", f"({_is_string('r.ended_at')} AND ended_at IS NOT NULL)"),
        optional("latency_s", _is_number("r.latency_s")),
        optional("cost_usd", _is_number("r.cost_usd")),
        f"{_is_integer('r.usage.prompt_tokens')} AND {_is_integer('r.usage.completion_tokens')}",
        "starts_with(r.tags, '{') AND (r.tags = '{}' OR all_in(json_type(r.tags, '$.*'), ['VARCHAR']))",
        _each("r.messages", message),
        _each("r.tools", "starts_with(x, '{')"),
        _each("r.events", event),
        _each("r.verifications", verification),
        _each("r.recoveries", f"{_is_integer('x.attempt')} AND {_is_string('x.reason')}"),
        _each("r.escalations", _is_string("x.reason")),
    ]


def fast_sql(source: str) -> str:
    """Like `checked_sql` (same columns), but one parse per line; `problem` is NULL for a
    confirmed record and UNSURE for every other non-blank line."""
    ok = " AND ".join(f"coalesce({cond}, FALSE)" for cond in _confirmed())
    text = {name: _unquote(f"r.{name}") for name in SHAPE}
    return f"""
    WITH lines AS (
      SELECT * FROM {source}
      WHERE starts_with(text, '{{') OR length(trim(text, ' ' || chr(9) || chr(13))) > 0
    ), shaped AS (
      SELECT *, CASE WHEN starts_with(text, '{{') AND json_valid(text)
                     THEN json_transform(text, {_sql_str(json.dumps(SHAPE))}) END AS r
      FROM lines
    ), timed AS (
      SELECT *, TRY_CAST({text["started_at"]} AS TIMESTAMPTZ) AS started_at,
                TRY_CAST({text["ended_at"]} AS TIMESTAMPTZ) AS ended_at
      FROM shaped
    )
    SELECT
      file_idx, line, last,
      CASE WHEN {ok} THEN NULL ELSE '{UNSURE}' END AS problem,
      TRY_CAST(r.schema_version AS INTEGER) AS seen_version,
      {text["run_id"]} AS run_id,
      TRY_CAST(r.schema_version AS INTEGER) AS schema_version,
      {text["scenario_id"]} AS scenario_id,
      {text["instance_hash"]} AS instance_hash,
      {text["category"]} AS category,
      {text["workflow"]} AS workflow,
      {text["agent_version"]} AS agent_version,
      {text["provider"]} AS provider,
      {text["model"]} AS model,
      {text["slot"]} AS slot,
      {text["traffic"]} AS traffic,
      {text["status"]} AS status,
      started_at, ended_at,
      TRY_CAST(r.latency_s AS DOUBLE) AS latency_s,
      TRY_CAST(r.cost_usd AS DOUBLE) AS cost_usd,
      TRY_CAST(r.usage.prompt_tokens AS BIGINT) AS prompt_tokens,
      TRY_CAST(r.usage.completion_tokens AS BIGINT) AS completion_tokens,
      len(r.messages)::INTEGER AS n_messages,
      len(r.recoveries)::INTEGER AS n_recoveries,
      len(r.escalations)::INTEGER AS n_escalations,
      coalesce(r.verifications[-1].passed = 'true', FALSE) AS verified,
      TRY_CAST(r.verifications[-1].score AS DOUBLE) AS score,
      r.events AS events
    FROM timed
    """
