"""Benign texts: what real memory is full of and a careless rule mistakes for secrets (commit
hashes, integrity strings, UUIDs, base64 blobs, public keys, minified code, lockfiles, and
NAME=value lines that are not secrets)."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable

from kindling_bundle.scrub.corpus.fakes import ALNUM, HEX, Gen


def _b_git_log(g: Gen) -> str:
    lines = []
    for _ in range(g.rng.randint(2, 6)):
        lines += [f"commit {g.sha1()}", "Author: Dev <dev@acme.dev>", "Date:   Tue Mar 3 2026",
                  "", f"    {g.sentence()}", ""]  # fmt: skip
    return "\n".join(lines)


def _b_git_misc(g: Gen) -> str:
    short = g.sha1()[:7]
    return (
        f"$ git rebase -i HEAD~3\nSuccessfully rebased and updated refs/heads/{g.word()}.\n"
        f"$ git log --oneline -3\n{short} {g.sentence()}\n{g.sha1()[:7]} {g.sentence()}\n"
        f"$ git rev-parse HEAD\n{g.sha1()}\nMerge: {g.sha1()[:12]} {g.sha1()[:12]}\n"
    )


def _b_diff(g: Gen) -> str:
    name = g.word()
    return (
        f"diff --git a/src/{name}.py b/src/{name}.py\nindex {g.sha1()[:7]}..{g.sha1()[:7]} 100644\n"
        f"--- a/src/{name}.py\n+++ b/src/{name}.py\n@@ -10,7 +10,8 @@ def load(path):\n"
        f"-    token = read_token(path)\n+    token = read_token(path, strict=True)\n"
        f"+    if not token:\n+        raise ValueError('missing token')\n"
        f"     password = getpass.getpass('Password: ')\n     secret = vault.read(key)\n"
    )


def _b_package_lock(g: Gen) -> str:
    entries = []
    for _ in range(g.rng.randint(2, 5)):
        name = g.word()
        sha512 = base64.b64encode(g.rng.randbytes(64)).decode()
        entries.append(
            f'    "node_modules/{name}": {{\n      "version": "1.{g.rng.randint(0, 20)}.0",\n'
            f'      "resolved": "https://registry.npmjs.org/{name}/-/{name}-1.2.0.tgz",\n'
            f'      "integrity": "sha512-{sha512}",\n      "dev": true\n    }}'
        )
    return '{\n  "lockfileVersion": 3,\n  "packages": {\n' + ",\n".join(entries) + "\n  }\n}"


def _b_yarn_lock(g: Gen) -> str:
    name = g.word()
    sha1 = g.sha1()
    return (
        f'"{name}@^2.0.0":\n  version "2.3.1"\n  resolved "https://registry.yarnpkg.com/{name}/-/'
        f'{name}-2.3.1.tgz#{sha1}"\n'
        f"  integrity sha1-{base64.b64encode(bytes.fromhex(sha1)).decode()}\n"
    )


def _b_poetry_pip(g: Gen) -> str:
    pkg = g.word()
    return (
        f"{pkg}==2.31.0 \\\n    --hash=sha256:{g.sha256()} \\\n    --hash=sha256:{g.sha256()}\n"
        f'[[package]]\nname = "{pkg}"\nfiles = [\n    {{file = "{pkg}-2.31.0.tar.gz", '
        f'hash = "sha256:{g.sha256()}"}},\n]\ncontent-hash = "{g.sha256()}"\n'
    )


def _b_go_cargo(g: Gen) -> str:
    h1 = base64.b64encode(g.rng.randbytes(32)).decode()
    return (
        f"github.com/{g.word()}/{g.word()} v1.4.2 h1:{h1}\n"
        f"github.com/{g.word()}/{g.word()} v1.4.2/go.mod h1:{g.b64(32)}\n"
        f'[[package]]\nname = "{g.word()}"\nversion = "0.4.1"\nsource = "registry+https://github.com/'
        f'rust-lang/crates.io-index"\nchecksum = "{g.sha256()}"\n'
    )


def _b_docker(g: Gen) -> str:
    return (
        f"$ docker pull python:3.12-slim\n3.12-slim: Pulling from library/python\n"
        f"{g.sha256()[:12]}: Pull complete\nDigest: sha256:{g.sha256()}\n"
        f"Status: Downloaded newer image for python:3.12-slim\n$ docker images\n"
        f"REPOSITORY   TAG         IMAGE ID       CREATED       SIZE\n"
        f"python       3.12-slim   {g.sha256()[:12]}   2 weeks ago   130MB\n"
        f"image: ghcr.io/acme/{g.word()}@sha256:{g.sha256()}\n"
    )


def _b_uuids(g: Gen) -> str:
    return json.dumps(
        {
            "id": g.uuid(),
            "sessionId": g.uuid(),
            "requestId": g.uuid(),
            "traceparent": f"00-{g.s(HEX, 32)}-{g.s(HEX, 16)}-01",
            "idempotency_key": g.uuid(),
            "cache_key": g.sha256()[:32],
        },
        indent=2,
    )


def _b_base64_blob(g: Gen) -> str:
    blob = g.b64(g.rng.randint(200, 900))
    style = g.rng.randrange(3)
    if style == 0:
        return f'<img src="data:image/png;base64,{blob}" alt="chart">'
    if style == 1:
        lines = [blob[i : i + 64] for i in range(0, len(blob), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    return f'{{"attachment": {{"filename": "report.pdf", "content": "{blob}"}}}}'


def _b_ssh_public(g: Gen) -> str:
    key = "AAAAC3NzaC1lZDI1NTE5AAAA" + g.b64(32)
    fp = base64.b64encode(g.rng.randbytes(32)).decode().rstrip("=")
    return (
        f"$ ssh-keygen -lf ~/.ssh/id_ed25519.pub\n256 SHA256:{fp} dev@laptop (ED25519)\n"
        f"$ cat ~/.ssh/id_ed25519.pub\nssh-ed25519 {key} dev@laptop\n"
        f"github.com ssh-ed25519 {key}\nThe key fingerprint is SHA256:{fp}.\n"
        "The key's randomart image is:\n+--[ED25519 256]--+\n|   .o+.          |\n"
        "+----[SHA256]-----+\n"
        f"Host key fingerprint MD5:{':'.join(g.s(HEX, 2) for _ in range(16))}\n"
    )


def _b_minified(g: Gen) -> str:
    ids = [g.s(string.ascii_letters, g.rng.randint(1, 3)) for _ in range(30)]
    body = ";".join(
        f'var {a}=function({b},{c}){{return {b}.{g.word()}({c},"{g.s(ALNUM, 20)}")}}'
        for a, b, c in zip(ids[::3], ids[1::3], ids[2::3], strict=False)
    )
    return f'!function(e){{"use strict";{body};e.key="{g.word()}";e.token=null}}(window);'


def _b_pytest(g: Gen) -> str:
    return (
        f"============================= test session starts ==============================\n"
        f"collected {g.rng.randint(10, 400)} items\n\ntests/test_{g.word()}.py ....F...\n\n"
        f"    def test_token_refresh(client):\n>       assert client.refresh_token() is not None\n"
        f"E       KeyError: 'access_token'\nE       assert None is not None\n"
        f"FAILED tests/test_{g.word()}.py::test_password_reset - KeyError: 'token'\n"
        f"====== 1 failed, {g.rng.randint(10, 300)} passed in {g.rng.randint(1, 90)}.21s ======\n"
    )


def _b_http_etag(g: Gen) -> str:
    return (
        f'HTTP/2 200\ncontent-type: application/json\netag: "{g.s(HEX, 32)}"\n'
        f"x-request-id: {g.uuid()}\nx-amz-request-id: {g.s(ALNUM.upper(), 16)}\n"
        f"x-amz-id-2: {g.b64(48)}\nlast-modified: Tue, 03 Mar 2026 10:00:00 GMT\n"
        f'ETag: W/"{g.s(HEX, 40)}"\n'
    )


def _b_s3_listing(g: Gen) -> str:
    rows = [
        {
            "Key": f"backups/{g.word()}-{i}.tar.zst",
            "ETag": f'"{g.s(HEX, 32)}"',
            "Size": g.rng.randint(1000, 10**9),
            "StorageClass": "STANDARD",
        }
        for i in range(g.rng.randint(2, 5))
    ]
    return json.dumps({"Contents": rows}, indent=2)


def _b_env_clean(g: Gen) -> str:
    return "$ env\n" + "\n".join(g.env_noise(g.rng.randint(8, 16)))


def _b_code_refs(g: Gen) -> str:
    snippets = [
        "password = getpass.getpass()\ntoken = os.environ['GITHUB_TOKEN']\n"
        "api_key = settings.OPENAI_API_KEY\nsecret = self.secret\n",
        "const token = process.env.NPM_TOKEN;\nconst apiKey = config.get('apiKey');\n"
        "if (!token) throw new Error('no token');\n",
        "def login(username: str, password: str) -> Session:\n"
        "    token: str = auth.issue(username)\n"
        "    return Session(token=token, password_hash=hash_password(password))\n",
        "class Settings(BaseSettings):\n    api_key: SecretStr\n    db_password: str = Field(...)\n"
        "    token_url: str = 'https://auth.acme.dev/oauth/token'\n    max_tokens: int = 4096\n",
        'headers = {"Authorization": f"Bearer {token}", "X-Api-Key": api_key}\n',
        "export AWS_PROFILE=staging\naws sts get-caller-identity\n"
        "kubectl get secret db-creds -o yaml\n",
    ]
    return g.pick(snippets)


def _b_placeholders(g: Gen) -> str:
    snippets = [
        "DATABASE_URL=postgres://user:password@localhost:5432/app\nAPI_KEY=<your-api-key>\n",
        "password: ${DB_PASSWORD}\ntoken: ${{ secrets.GITHUB_TOKEN }}\n"
        "api_key: '{{ .Values.apiKey }}'\n",
        "# Replace with your own key\nOPENAI_API_KEY=sk-...\n"
        "STRIPE_KEY=sk_test_xxxxxxxxxxxxxxxxxxxxxxxx\n",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        "curl -H 'Authorization: Bearer $TOKEN' https://api.github.com/user\n",
        "docker login -u $REGISTRY_USER --password-stdin < token.txt\n",
        'SECRET_KEY = os.environ.get("SECRET_KEY", "")\nPASSWORD_MIN_LENGTH = 12\n',
        "git clone https://github.com/acme/app.git\n"
        "git remote add fork git@github.com:me/app.git\n",
    ]
    return g.pick(snippets)


def _b_k8s(g: Gen) -> str:
    safe = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' alphabet for generated names
    pod = f"{g.word()}-{g.s(safe, 10)}-{g.s(safe, 5)}"
    return (
        f"$ kubectl get pods\nNAME                          READY   STATUS    RESTARTS   AGE\n"
        f"{pod}   1/1     Running   0          3d\n$ kubectl describe pod {pod}\n"
        f"Container ID:  containerd://{g.sha256()}\nImage ID:      docker.io/library/nginx@sha256:"
        f"{g.sha256()}\nControlled By:  ReplicaSet/{pod[:-6]}\nuid: {g.uuid()}\n"
    )


def _b_prose(g: Gen) -> str:
    return " ".join(g.sentence() for _ in range(g.rng.randint(2, 8)))


def _b_terraform(g: Gen) -> str:
    return (
        f'resource "aws_instance" "{g.word()}" {{\n  ami           = "ami-{g.s(HEX, 17)}"\n'
        f'  instance_type = "t3.micro"\n  subnet_id     = "subnet-{g.s(HEX, 17)}"\n}}\n'
        f"aws_instance.{g.word()}: Creation complete after 32s [id=i-{g.s(HEX, 17)}]\n"
        f'"arn": "arn:aws:iam::{g.s("0123456789", 12)}:role/{g.word()}-deployer"\n'
    )


def _b_traceback(g: Gen) -> str:
    return (
        f'Traceback (most recent call last):\n  File "/srv/app/{g.word()}.py", '
        f"line {g.rng.randint(1, 900)}, "
        f"in refresh\n    token = self._client.fetch_token(token_url, client_id=cid)\n"
        "oauthlib.oauth2.rfc6749.errors.InvalidGrantError: (invalid_grant) "
        "Token has been expired or revoked.\n"
        f"request_id={g.uuid()} trace={g.s(HEX, 32)}\n"
    )


def _b_stripe_ids(g: Gen) -> str:
    return json.dumps(
        {
            "id": "pi_" + g.s(ALNUM, 24),
            "object": "payment_intent",
            "customer": "cus_" + g.s(ALNUM, 14),
            "latest_charge": "ch_" + g.s(ALNUM, 24),
            "payment_method": "pm_" + g.s(ALNUM, 24),
            "client_secret_present": False,
            "livemode": False,
        },
        indent=2,
    )


def _b_lfs_pointer(g: Gen) -> str:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{g.sha256()}\n"
        f"size {g.rng.randint(1000, 10**8)}\n"
    )


def _b_talk_about_secrets(g: Gen) -> str:
    snippets = [
        "Rotate the API key, then update the secret in Vault and restart the worker.",
        "The token expired after 3600 seconds; the refresh token flow fixed it.",
        "Set PASSWORD in your environment (never commit it) and run `make deploy`.",
        'echo "$REGISTRY_PASSWORD" | docker login ghcr.io -u ci --password-stdin',
        "read -s PASSWORD && export PASSWORD",
        "digest = hashlib.sha256(password.encode()).hexdigest()",
        "tokens = tokenizer.encode(text)\ntokenizer.pad_token = tokenizer.eos_token\n"
        "max_tokens = min(4096, len(tokens))",
        '"password": {"type": "string", "minLength": 12, "writeOnly": true}',
        "securitySchemes:\n  bearerAuth:\n    type: http\n    scheme: bearer\n"
        "    bearerFormat: JWT",
        'variable "db_password" {\n  type      = string\n  sensitive = true\n}',
        "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef:\n"
        "        name: db-secret\n        key: password",
        "SENTRY_DSN=https://" + g.s(HEX, 32) + "@o" + str(g.rng.randint(10000, 99999))
        + ".ingest.sentry.io/" + str(g.rng.randint(100000, 999999)),
    ]  # fmt: skip
    return g.pick(snippets)


def _b_log_ids(g: Gen) -> str:
    lines = [
        f"2026-03-03T10:{g.rng.randint(10, 59)}:00Z INFO request_id={g.s(ALNUM, 22)} "
        f"span={g.s(HEX, 16)} user={g.uuid()} path=/api/{g.word()} status=200"
        for _ in range(g.rng.randint(3, 8))
    ]
    return "\n".join(lines)


BENIGN: list[Callable[[Gen], str]] = [
    _b_git_log, _b_git_misc, _b_diff, _b_package_lock, _b_yarn_lock, _b_poetry_pip, _b_go_cargo,
    _b_docker, _b_uuids, _b_base64_blob, _b_ssh_public, _b_minified, _b_pytest, _b_http_etag,
    _b_s3_listing, _b_env_clean, _b_code_refs, _b_placeholders, _b_k8s, _b_prose, _b_terraform,
    _b_traceback, _b_stripe_ids, _b_lfs_pointer, _b_talk_about_secrets, _b_log_ids,
]  # fmt: skip
