"""Finding and scrubbing secrets in text and in records."""

from __future__ import annotations

import random
import string
import time

import msgspec
import pytest

from kindling_bundle.records import Capsule, Observation, Pin, Summary
from kindling_bundle.scrub import Scanner, ScrubTally, load_rules, mask

ALNUM = string.ascii_letters + string.digits
RNG = random.Random(7)
GHP = "ghp_" + "".join(RNG.choice(ALNUM) for _ in range(36))
AWS_ID = "AKIA" + "".join(RNG.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
AWS_SECRET = "".join(RNG.choice(ALNUM + "+/") for _ in range(40))


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.load()


def test_scrub_replaces_each_secret_and_nothing_else(scanner: Scanner) -> None:
    text = f"$ export GITHUB_TOKEN={GHP}\n$ git log -1\ncommit {'a1' * 20}\n"
    new, findings = scanner.scrub(text)
    assert new == text.replace(GHP, "[REDACTED:github-pat]")
    assert [(f.rule_id, text[f.start : f.end]) for f in findings] == [("github-pat", GHP)]
    assert scanner.scrub(new) == (new, [])  # a scrubbed text has nothing left to find
    assert scanner.scrub("plain words, no secrets") == ("plain words, no secrets", [])


def test_overlapping_findings_become_one_named_by_the_first_rule(scanner: Scanner) -> None:
    tok = "ghs_" + GHP[4:]
    text = f"origin https://x-access-token:{tok}@github.com/acme/app.git (fetch)"
    new, findings = scanner.scrub(text)
    assert [f.rule_id for f in findings] == ["github-app-token"]  # url-credentials overlaps
    assert tok not in new and "x-access-token:[REDACTED:github-app-token]@github.com" in new


def test_aws_secret_key_is_found_near_its_key_id_only(scanner: Scanner) -> None:
    near = f"id,secret\n{AWS_ID},{AWS_SECRET}\n"
    assert [f.rule_id for f in scanner.find(near)] == [
        "aws-access-key-id",
        "aws-secret-key-near-id",
    ]
    far = f"{AWS_ID}\n" + "filler line\n" * 10 + f"blob {AWS_SECRET}\n"
    assert [f.rule_id for f in scanner.find(far)] == ["aws-access-key-id"]


@pytest.mark.parametrize(
    "text",
    [
        "DB_PASSWORD=correct-horse-battery",
        'config = {"password": "s3cr3t-Value!"}',
        "password: 'Winter2026!'",
        "pgbouncer: postgres://app:Tr0ub4dor3x@db.internal:6432/app",
        "$ mysql -u root -pS3cretPass app",
        '{"key": "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ'
        'AAAAAAAAABAAAAMwAAAAtzc2gtZWQy\\n-----END OPENSSH PRIVATE KEY-----\\n"}',
        "remember <private>the vault combination is 4-8-15-16</private>",
    ],
)
def test_what_gitleaks_lacks_is_found(scanner: Scanner, text: str) -> None:
    assert scanner.find(text)


@pytest.mark.parametrize(
    "text",
    [
        f"commit {'9fceb02d0ae598e95dc970b74767f19372d61af8'}",
        '"integrity": "sha512-'
        + "Qm9ndXMgYmxvYiBvZiBieXRlcyBmb3IgdGVzdGluZyBpbnRlZ3JpdHk" * 2
        + '=="',
        "Digest: sha256:" + "3f" * 32,
        'ETag: W/"' + "0123456789abcdef" * 2 + '"',
        "request_id=0f8fad5b-d9cb-469f-a165-70867728950e",
        "256 SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8 dev@laptop (ED25519)",
        "PWD=/home/dev/app\nTOKENIZERS_PARALLELISM=false\nSSH_AUTH_SOCK=/tmp/ssh-x/agent.1",
        "password: ${DB_PASSWORD}\napi_key: <your-api-key>\ntoken: changeme",
        "token = os.environ['GITHUB_TOKEN']\npassword = getpass.getpass()",
    ],
)
def test_known_false_positives_are_left_alone(scanner: Scanner, text: str) -> None:
    assert scanner.find(text) == []


def test_mask_never_shows_more_than_a_short_prefix_and_suffix() -> None:
    assert mask(GHP) == f"ghp_…{GHP[-4:]}"
    assert mask("hunter22") == "…"  # a short secret shows nothing
    assert mask("correct-horse-b") == "co…-b"
    long = "".join(RNG.choice(ALNUM) for _ in range(64))
    assert mask(long) == f"{long[:4]}…{long[-4:]}"
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    assert mask(pem) == "-----BEGIN RSA PRIVATE KEY-----…"
    assert "\n" not in mask("ab\ncd\nef\ngh\nij\nkl\nmn")


@pytest.mark.parametrize("offset", [60, 90, 95, 99, 100, 101, 110, 118])
def test_a_secret_across_a_window_edge_is_found_once(offset: int) -> None:
    scanner = Scanner(load_rules([]), window=100, overlap=len(GHP) + 2)
    filler = "".join(RNG.choice(string.ascii_lowercase + " ") for _ in range(400))
    text = filler[:offset] + " " + GHP + " " + filler[offset:]
    findings = scanner.find(text)
    assert [(f.rule_id, text[f.start : f.end]) for f in findings] == [("github-pat", GHP)]


def test_windows_give_what_one_pass_gives(scanner: Scanner) -> None:
    small = Scanner(load_rules([]), window=256, overlap=64)
    note = "".join(RNG.choice(string.ascii_lowercase) for _ in range(700))
    private = f"<private>{note}</private>"  # longer than a window and its overlap
    parts = [GHP, f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", private, "DB_PASSWORD=Tr0ub4dor&3x"]
    text = "\n".join(
        RNG.choice(parts) + " " + "lorem ipsum " * RNG.randint(0, 40) for _ in range(40)
    )
    assert small.find(text) == scanner.find(text)
    assert note in text and note[:50] not in small.scrub(text)[0]


def test_work_per_text_stays_bounded_on_hostile_input(scanner: Scanner) -> None:
    hostile = [
        "password=" * 40_000,
        "-----BEGIN PRIVATE KEY-----\n" + "QUJD" * 100_000,
        "-----BEGIN PRIVATE KEY-----\n" * 10_000,  # each BEGIN must not scan to the end
        "://" + "a:" * 100_000,
        "token: " + "a" * 200_000,
        "<private>" + "y" * 300_000,
        "sk-" * 100_000,
        ('"secret": "' + "\\\\" * 1000) * 100,
    ]
    for text in hostile:
        start = time.process_time()
        scanner.find(text)
        assert time.process_time() - start < 3.0, text[:20]


def test_scrubbing_is_deterministic(scanner: Scanner) -> None:
    text = f"a {GHP} b DB_PASSWORD=hunter2hunter2 c {AWS_ID} {AWS_SECRET}"
    assert Scanner.load().scrub(text) == scanner.scrub(text)


def test_scrub_record_covers_each_entity_and_changes_nothing_else(scanner: Scanner) -> None:
    obs = Observation(
        id="o1",
        kind="command",
        content=f"git push https://me:{GHP}@github.com/a/b",
        provenance={
            "source": "claude-code",
            "env": {"DB_PASSWORD": "Tr0ub4dor&3x", "HOME": "/home/me"},
            "argv": ["deploy", f"--token={GHP}"],
            "n": 3,
        },
        ts=5,
        scope_ids={"sessionId": "s1"},
    )
    new, findings = scanner.scrub_record(obs)
    assert isinstance(new, Observation)
    assert [(f.entity, f.id, f.field, f.rule_id) for f in findings] == [
        ("observations", "o1", "content", "github-pat"),
        ("observations", "o1", "provenance.env.DB_PASSWORD", "password-assignment"),
        ("observations", "o1", "provenance.argv[1]", "github-pat"),
    ]
    assert all(GHP not in f.preview and "Tr0ub4dor" not in f.preview for f in findings)
    assert new.content == "git push https://me:[REDACTED:github-pat]@github.com/a/b"
    assert new.provenance == {
        "source": "claude-code",
        "env": {"DB_PASSWORD": "[REDACTED:password-assignment]", "HOME": "/home/me"},
        "argv": ["deploy", "--token=[REDACTED:github-pat]"],
        "n": 3,
    }
    assert list(new.provenance) == list(obs.provenance)
    assert (new.id, new.kind, new.ts, new.scope_ids, new.redacted) == ("o1", "command", 5, {
        "sessionId": "s1"}, False)  # fmt: skip
    encoded = msgspec.msgpack.encode(new)
    assert GHP.encode() not in encoded and b"Tr0ub4dor" not in encoded
    assert obs.provenance["env"]["DB_PASSWORD"] == "Tr0ub4dor&3x"  # the input is not modified

    cap = Capsule(id="c1", type="session", intent=f"rotate {GHP}", opened_at=1)
    summ = Summary(id="u1", capsule_id="c1", content=f"used {GHP}", confidence=0.5, created_at=2)
    pin = Pin(id="p1", target_type="summary", target_id="u1", reason=f"key {GHP}", created_at=3)
    for record, field in ((cap, "intent"), (summ, "content"), (pin, "reason")):
        new_record, found = scanner.scrub_record(record)
        assert [(f.field, f.rule_id) for f in found] == [(field, "github-pat")]
        assert getattr(new_record, field).endswith("[REDACTED:github-pat]")
        assert msgspec.structs.replace(new_record, **{field: getattr(record, field)}) == record


def test_a_clean_record_comes_back_as_the_same_object(scanner: Scanner) -> None:
    obs = Observation(
        id="o2", kind="message", content="all good", provenance={"files": ["a.py"]}, ts=1
    )
    assert scanner.scrub_record(obs) == (obs, [])
    assert scanner.scrub_record(obs)[0] is obs
    pin = Pin(id="p", target_type="observation", target_id="o2", created_at=1)
    assert scanner.scrub_record(pin)[0] is pin


def test_tally_counts_by_rule_without_secrets(scanner: Scanner) -> None:
    tally = ScrubTally()
    for content in (f"{GHP} {GHP}", "clean", "DB_PASSWORD=Tr0ub4dor&3x"):
        obs = Observation(id=content[:3], kind="message", content=content, ts=1)
        tally.add(scanner.scrub_record(obs)[1])
    assert tally.records == 2 and tally.findings == 3
    assert dict(tally.by_rule) == {"github-pat": 2, "password-assignment": 1}
    record = tally.manifest(scanner)
    assert record["ruleSet"] == {"name": scanner.name, "version": scanner.version}
    assert record["byRule"] == {"github-pat": 2, "password-assignment": 1}
    assert record["ruleFiles"][0]["name"] == "rules.toml"
    text = msgspec.json.encode(record)
    assert GHP.encode() not in text and b"Tr0ub4dor" not in text


def test_the_keyword_prefilter_misses_no_keyword_in_any_case(scanner: Scanner) -> None:
    """Every keyword that `text.lower()` holds is reported, for texts packed with keywords in
    mixed case, non-ASCII letters, lone surrogates and long runs between them."""
    keywords = sorted(scanner._by_keyword)
    prefilter = scanner._prefilter
    rng = random.Random(20)
    noise = ["é", "İ", "ſ", "K", "\ud800", "\n", " ", "x" * 5000, "ß", "😀"]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 12)):
            word = rng.choice(keywords)
            parts.append("".join(c.upper() if rng.random() < 0.5 else c for c in word))
            parts.append(rng.choice(noise))
        text = "".join(parts)
        expected = {kw for kw in keywords if kw in text.lower()}
        found = prefilter.present(text.encode("utf-8", "surrogatepass"))
        assert expected <= found, sorted(expected - found)
    assert prefilter.present(b"plain words and a sha256 digest") == set()


def test_provenance_is_scanned_as_its_key_value_pairs_read(scanner: Scanner) -> None:
    """A string under a key is scanned as `KEY="value"`; the one-pass check of the provenance's
    JSON must not hide a keyword that only that reading has (`pass=` in `DB_PASS="..."`)."""
    value = "Tr0ub4dor3xyzQ"
    names = {kw.split("=")[0].strip() for kw in scanner._by_keyword if "=" in kw}
    checked = 0
    for name in sorted(n for n in names if n.replace("_", "").replace("-", "").isalnum()):
        key = "APP_" + name.upper()
        expected = [f.rule_id for f in scanner.find(f'{key}="{value}"')]
        obs = Observation(id="o", kind="command", content="", provenance={key: value}, ts=1)
        found = [f.rule_id for f in scanner.scrub_record(obs)[1]]
        assert found == expected, key
        checked += bool(expected)
    assert checked >= 5
