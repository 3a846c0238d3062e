"""Records carry every column of every row losslessly, and decoding rejects invalid values
with a message that names the field."""

from __future__ import annotations

import re
import sqlite3

import msgspec
import pytest

from kindling_bundle import Capsule, Observation, Pin, Summary
from kindling_bundle.db.rows import (
    CAPSULE_SELECT,
    OBSERVATION_SELECT,
    PIN_SELECT,
    SUMMARY_SELECT,
    capsule_from_row,
    capsule_values,
    observation_from_row,
    observation_values,
    pin_from_row,
    pin_values,
    summary_from_row,
    summary_values,
)
from kindling_bundle.db.writes import (
    INSERT_CAPSULE,
    INSERT_OBSERVATION,
    INSERT_PIN,
    INSERT_SUMMARY,
    create_capsule,
    insert_observation,
    insert_pin,
    insert_summary,
)
from kindling_bundle.kindling_json.jsjson import dumps, js_number, loads

# Provenance texts exactly as Node's JSON.stringify wrote them (node -e 'JSON.stringify(v)').
JS_WRITTEN_PROVENANCE = [
    '{"tool":"Bash","n":1,"f":0.1,"big":1e+21,"small":1e-7,"mid":10000000000000000,'
    '"neg":-2.5e-8,"arr":[1,"two",null,true,false,{"x":[]}],'
    '"u":"café ✓ 日本 \u2028 \\u0001 \\"q\\" \\\\ /"}',
    "{}",
    '{"nested":{"deep":{"deeper":[[[1.5]]]}}}',
]


@pytest.mark.parametrize("provenance", JS_WRITTEN_PROVENANCE)
def test_every_column_survives_row_record_bundle_row(new_store, provenance: str) -> None:
    scope = '{"taskId":"t-9","sessionId":"s","userId":"u","custom":"kept"}'
    new_store.execute(
        "INSERT INTO observations (id, kind, content, provenance, ts, scope_ids, redacted, "
        "session_id, user_id) VALUES ('o1', 'tool_call', ?, ?, -5, ?, 0, 's', 'u')",
        ("x\u0000y ✓", provenance, scope),
    )
    new_store.execute(
        "INSERT INTO capsules VALUES ('c1', 'pocketflow_node', 'intent', 'closed', 1, 2, ?, "
        "'s', NULL, NULL, 'u')",
        (scope,),
    )
    new_store.execute("INSERT INTO capsule_observations VALUES ('c1', 'o1', 0)")
    new_store.execute(
        "INSERT INTO summaries VALUES ('s1', 'c1', 'sum', 0.30000000000000004, 3, '[\"o1\"]')"
    )
    new_store.execute(
        "INSERT INTO pins VALUES ('p1', 'summary', 's1', NULL, 4, NULL, ?, 's', NULL, NULL, 'u')",
        (scope,),
    )
    before = _rows(new_store)

    obs = observation_from_row(
        new_store.execute(f"SELECT {OBSERVATION_SELECT} FROM observations").fetchone()
    )
    cap = capsule_from_row(
        new_store.execute(f"SELECT {CAPSULE_SELECT} FROM capsules").fetchone(), ["o1"]
    )
    summ = summary_from_row(new_store.execute(f"SELECT {SUMMARY_SELECT} FROM summaries").fetchone())
    pin = pin_from_row(new_store.execute(f"SELECT {PIN_SELECT} FROM pins").fetchone())
    records = [
        msgspec.msgpack.decode(msgspec.msgpack.encode(r), type=type(r))
        for r in (obs, cap, summ, pin)
    ]
    target = sqlite3.connect(":memory:")
    for statement in new_store.execute(
        "SELECT sql FROM sqlite_master WHERE type='table' "
        "AND name IN ('observations','capsules','summaries','pins')"
    ):
        target.execute(statement[0])
    target.execute(INSERT_OBSERVATION, observation_values(records[0]))
    target.execute(INSERT_CAPSULE, capsule_values(records[1]))
    target.execute(INSERT_SUMMARY, summary_values(records[2]))
    target.execute(INSERT_PIN, pin_values(records[3]))
    assert _rows(target) == before


def _rows(conn) -> dict[str, list[tuple]]:
    return {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
        for t in ("observations", "capsules", "summaries", "pins")
    }


def test_write_path_stores_what_javascript_would(new_store) -> None:
    prov = msgspec.json.decode(JS_WRITTEN_PROVENANCE[0])
    insert_observation(
        new_store, Observation(id="o", kind="message", content="c", ts=1, provenance=prov)
    )
    stored = new_store.execute("SELECT provenance FROM observations").fetchone()[0]
    assert stored == JS_WRITTEN_PROVENANCE[0]
    create_capsule(new_store, Capsule(id="c", type="session", intent="i", opened_at=1))
    insert_summary(
        new_store, Summary(id="s", capsule_id="c", content="x", confidence=1.0, created_at=1)
    )
    insert_pin(new_store, Pin(id="p", target_type="summary", target_id="s", created_at=1))
    assert new_store.execute("SELECT confidence FROM summaries").fetchone()[0] == 1.0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (1e21, "1e+21"),
        (1e16, "10000000000000000"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (-0.0, "0"),
        (123.456, "123.456"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (2.5e-8, "2.5e-8"),
    ],
)
def test_numbers_are_written_as_javascript_writes_them(value: float, text: str) -> None:
    assert js_number(value) == text


def test_non_finite_numbers_cannot_be_stored() -> None:
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


@pytest.mark.parametrize(
    ("record_type", "payload", "field"),
    [
        (Observation, {"id": "o", "kind": "thought", "content": "", "ts": 1}, "$.kind"),
        (Observation, {"id": "o", "kind": "message", "content": "", "ts": "1"}, "$.ts"),
        (Observation, {"id": "o", "kind": "message", "content": "", "ts": 2**63}, "$.ts"),
        (Capsule, {"id": "c", "type": "meeting", "intent": "", "openedAt": 1}, "$.type"),
        (
            Capsule,
            {"id": "c", "type": "session", "intent": "", "status": "paused", "openedAt": 1},
            "$.status",
        ),
        (
            Summary,
            {"id": "s", "capsuleId": "c", "content": "", "confidence": 1.01, "createdAt": 1},
            "$.confidence",
        ),
        (
            Summary,
            {"id": "s", "capsuleId": "c", "content": "", "confidence": -0.1, "createdAt": 1},
            "$.confidence",
        ),
        (
            Pin,
            {"id": "p", "targetType": "capsule", "targetId": "c", "createdAt": 1},
            "$.targetType",
        ),
        (
            Pin,
            {
                "id": "p",
                "targetType": "summary",
                "targetId": "c",
                "createdAt": 1,
                "scopeIds": {"sessionId": 5},
            },
            "$.scopeIds[...]",
        ),
    ],
)
def test_decoding_rejects_invalid_values_naming_the_field(record_type, payload, field) -> None:
    for codec in (msgspec.json, msgspec.msgpack):
        with pytest.raises(msgspec.ValidationError, match=re.escape(f"at `{field}`")):
            codec.decode(codec.encode(payload), type=record_type)


def test_wire_names_are_kindlings_camel_case() -> None:
    cap = Capsule(id="c", type="session", intent="i", opened_at=1, observation_ids=["a"])
    assert list(msgspec.to_builtins(cap)) == [
        "id",
        "type",
        "intent",
        "status",
        "openedAt",
        "closedAt",
        "scopeIds",
        "observationIds",
    ]
    pin = Pin(id="p", target_type="observation", target_id="o", created_at=1)
    assert list(msgspec.to_builtins(pin)) == [
        "id",
        "targetType",
        "targetId",
        "reason",
        "createdAt",
        "expiresAt",
        "scopeIds",
    ]


def test_a_number_javascript_writes_as_wide_digits_survives_a_bundle() -> None:
    text = '{"big":100000000000000000000,"max":18446744073709552000,"neg":-1e+21}'  # node wrote it
    value = loads(text)
    msgspec.msgpack.encode(value)  # fits a bundle record
    assert dumps(msgspec.msgpack.decode(msgspec.msgpack.encode(value))) == text
