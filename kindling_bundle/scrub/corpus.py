"""A labelled corpus for measuring the scanner: fake secrets in realistic surroundings, and
benign developer text that looks like secrets to a careless rule.

Everything is made from a seeded random generator at run time, so the repository holds no
secret-looking string, and the same seed gives the same corpus on every machine. Planted texts
say where each secret is; a secret counts as found only when findings cover all of it. The
benign texts carry what real memory is full of: commit hashes, sha256/sha512 integrity strings,
UUIDs, base64 blobs, public keys and fingerprints, minified code, diffs, lockfiles, image
digests, and the many NAME=value lines that are not secrets (PWD, TOKENIZERS_PARALLELISM, ...).
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kindling_bundle.scrub.scanner import Finding, Scanner

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
HEX = "0123456789abcdef"
BECH32 = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"


@dataclass(frozen=True)
class Planted:
    """A text with fake secrets at known spans."""

    kind: str
    text: str
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Corpus:
    planted: tuple[Planted, ...]
    benign: tuple[str, ...]


@dataclass
class Score:
    """How a scanner did on a corpus: recall on planted secrets, false positives on benign texts."""

    secrets: int = 0
    found: int = 0
    benign: int = 0
    flagged: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)
    """kind -> [found, planted]"""
    missed: list[tuple[str, str]] = field(default_factory=list)
    """(kind, text) of planted texts with a secret not fully covered."""
    false_positives: list[tuple[str, str]] = field(default_factory=list)
    """(rule id, benign text) for each benign text that a rule changed."""

    @property
    def recall(self) -> float:
        return self.found / self.secrets if self.secrets else 1.0

    @property
    def false_positive_rate(self) -> float:
        return self.flagged / self.benign if self.benign else 0.0


def evaluate(scanner: Scanner, corpus: Corpus | None = None) -> Score:
    """Run the scanner over a corpus (the default one if none is given) and score it."""
    return evaluate_with(scanner.find, corpus or make_corpus())


def evaluate_with(find: Callable[[str], list[Finding]], corpus: Corpus) -> Score:
    """Score any finder that returns findings with start/end (for comparing rule sets)."""
    score = Score()
    for item in corpus.planted:
        findings = find(item.text)
        counts = score.by_kind.setdefault(item.kind, [0, 0])
        all_found = True
        for start, end in item.spans:
            score.secrets += 1
            counts[1] += 1
            if _covered(findings, start, end):
                score.found += 1
                counts[0] += 1
            else:
                all_found = False
        if not all_found:
            score.missed.append((item.kind, item.text))
    for text in corpus.benign:
        score.benign += 1
        findings = find(text)
        if findings:
            score.flagged += 1
            score.false_positives.append((findings[0].rule_id, text))
    return score


def _covered(findings: list[Finding], start: int, end: int) -> bool:
    pos = start
    for f in sorted(findings, key=lambda f: f.start):
        if f.start <= pos < f.end:
            pos = f.end
        if pos >= end:
            return True
    return pos >= end


def make_corpus(seed: int = 20, *, repeat: int = 24, benign: int = 1600) -> Corpus:
    """`repeat` texts of each planted kind (most hold one secret, some two) and `benign` texts."""
    rng = random.Random(seed)
    gen = _Gen(rng)
    planted = []
    for _ in range(repeat):
        for kind, make in _PLANTERS.items():
            planted.append(make(gen).done(kind))
    benign_texts = [rng.choice(_BENIGN)(gen) for _ in range(benign)]
    return Corpus(tuple(planted), tuple(benign_texts))


class _Builder:
    """Text assembled from pieces, remembering where the secret pieces are."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.size = 0

    def add(self, text: str) -> _Builder:
        self.parts.append(text)
        self.size += len(text)
        return self

    def secret(self, text: str) -> _Builder:
        self.spans.append((self.size, self.size + len(text)))
        return self.add(text)

    def done(self, kind: str) -> Planted:
        return Planted(kind, "".join(self.parts), tuple(self.spans))


class _Gen:
    """Fake secrets and plausible filler."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def s(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def pick(self, items: Sequence[str]) -> str:
        return self.rng.choice(items)

    def sha1(self) -> str:
        return self.s(HEX, 40)

    def sha256(self) -> str:
        return self.s(HEX, 64)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def b64(self, nbytes: int) -> str:
        return base64.b64encode(self.rng.randbytes(nbytes)).decode()

    def word(self) -> str:
        return self.pick(_WORDS)

    def sentence(self) -> str:
        words = [self.word() for _ in range(self.rng.randint(5, 14))]
        return " ".join(words).capitalize() + "."

    def host(self) -> str:
        return self.pick(["db.internal", "10.0.3.17", "postgres.prod.svc", "localhost",
                          "cache-01.example.net", "mongo.cluster0.abcd1.mongodb.net"])  # fmt: skip

    def password(self) -> str:
        style = self.rng.randrange(4)
        if style == 0:
            return self.s(ALNUM, self.rng.randint(12, 24))
        if style == 1:
            return self.s(ALNUM + "!#%^*_-+=", self.rng.randint(10, 20))
        if style == 2:
            words = [self.pick(_WORDS).capitalize() for _ in range(3)]
            return "".join(words) + str(self.rng.randint(10, 99)) + self.pick("!?#")
        return self.pick(["hunter", "Summer", "Winter", "Dragon"]) + str(
            self.rng.randint(1000, 9999)
        )

    def env_noise(self, n: int) -> list[str]:
        lines = [
            f"HOME=/home/{self.pick(['alice', 'bob', 'dev'])}",
            "SHELL=/bin/bash",
            "LANG=en_US.UTF-8",
            "TERM=xterm-256color",
            f"PWD=/home/dev/src/{self.word()}",
            f"OLDPWD=/home/dev/src/{self.word()}",
            "PATH=/usr/local/bin:/usr/bin:/bin:/home/dev/.cargo/bin",
            f"SSH_AUTH_SOCK=/tmp/ssh-{self.s(ALNUM, 10)}/agent.{self.rng.randint(1000, 9999)}",
            f"HOSTNAME={self.word()}-{self.s(HEX, 12)}",
            "TOKENIZERS_PARALLELISM=false",
            "GIT_ASKPASS=/usr/share/code/resources/app/extensions/git/dist/askpass.sh",
            "EDITOR=vim",
            f"VIRTUAL_ENV=/home/dev/src/{self.word()}/.venv",
            "NODE_ENV=development",
            f"GIT_COMMIT={self.sha1()}",
            f"BUILD_ID={self.uuid()}",
            "LOG_LEVEL=debug",
            "PAGER=less",
            "COLORTERM=truecolor",
            "XDG_RUNTIME_DIR=/run/user/1000",
        ]
        return self.rng.sample(lines, n)


_WORDS = tuple(
    """
    the agent ran tests for parser module and found failing case in tokenizer while
    refactoring config loader cache invalidation retry backoff timeout handler request
    response schema migration index query build lint deploy review commit branch merge
    rebase fixture mock endpoint payload latency memory thread lock queue worker
    scheduler plugin adapter capsule observation summary bundle verify restore snapshot
    session token budget key value store
""".split()  # noqa: SIM905
)


# --- planted secrets -----------------------------------------------------------------------


def _ghp(g: _Gen) -> str:
    return "ghp_" + g.s(ALNUM, 36)


def _aws_pair(g: _Gen) -> tuple[str, str]:
    return "AKIA" + g.s("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16), g.s(B64, 40)


def _pem_body(g: _Gen, nbytes: int) -> list[str]:
    data = g.b64(nbytes)
    return [data[i : i + 64] for i in range(0, len(data), 64)]


def _p_github_env(g: _Gen) -> _Builder:
    b = _Builder().add("$ env | sort\n" + "\n".join(g.env_noise(6)) + "\nGITHUB_TOKEN=")
    return b.secret(_ghp(g)).add("\n" + "\n".join(g.env_noise(3)) + "\n")


def _p_github_fine(g: _Gen) -> _Builder:
    tok = "github_pat_" + g.s(ALNUM, 22) + "_" + g.s(ALNUM, 59)
    b = _Builder().add("gh auth login --with-token <<< ")
    return b.secret(tok).add("\n✓ Logged in to github.com as dev\n")


def _p_git_remote(g: _Gen) -> _Builder:
    tok = g.pick(["ghs_", "gho_", "ghu_"]) + g.s(ALNUM, 36)
    b = _Builder().add("$ git remote -v\norigin\thttps://x-access-token:")
    b.secret(tok).add(f"@github.com/acme/{g.word()}.git (fetch)\n")
    return b.add(f"upstream\tgit@github.com:acme/{g.word()}.git (push)\n")


def _p_gitlab(g: _Gen) -> _Builder:
    b = _Builder().add('curl --header "PRIVATE-TOKEN: ')
    b.secret("glpat-" + g.s(B64URL, 20))
    return b.add(f'" "https://gitlab.com/api/v4/projects/{g.rng.randint(100, 99999)}/pipelines"')


def _p_aws_credentials(g: _Gen) -> _Builder:
    key_id, secret = _aws_pair(g)
    style = g.rng.randrange(3)
    b = _Builder()
    if style == 0:
        b.add("$ cat ~/.aws/credentials\n[default]\naws_access_key_id = ").secret(key_id)
        b.add("\naws_secret_access_key = ").secret(secret).add("\nregion = eu-west-1\n")
    elif style == 1:
        b.add("User name,Access key ID,Secret access key\nci-deployer,").secret(key_id)
        b.add(",").secret(secret).add("\n")
    else:
        b.add(f'{{"AccessKey": {{"UserName": "{g.word()}", "AccessKeyId": "').secret(key_id)
        b.add('", "Status": "Active", "SecretAccessKey": "').secret(secret)
        b.add('", "CreateDate": "2026-03-02T10:11:12+00:00"}}')
    return b


def _p_openai(g: _Gen) -> _Builder:
    key = "sk-proj-" + g.s(B64URL, 74) + "T3BlbkFJ" + g.s(B64URL, 74)
    b = _Builder().add('from openai import OpenAI\n\nclient = OpenAI(\n    api_key="')
    return b.secret(key).add('",\n)\nresp = client.responses.create(model="gpt-5", input="hi")\n')


def _p_anthropic(g: _Gen) -> _Builder:
    key = "sk-ant-api03-" + g.s(B64URL, 93) + "AA"
    b = _Builder().add("export ANTHROPIC_API_KEY=").secret(key)
    return b.add("\nclaude --model opus\n")


def _p_slack(g: _Gen) -> _Builder:
    tok = f"xoxb-{g.s('0123456789', 12)}-{g.s('0123456789', 13)}-{g.s(ALNUM, 24)}"
    b = _Builder().add("slack:\n  channel: '#deploys'\n  bot_token: ").secret(tok)
    return b.add("\n  notify_on: [failure]\n")


def _p_slack_webhook(g: _Gen) -> _Builder:
    path = f"T{g.s(ALNUM.upper(), 10)}/B{g.s(ALNUM.upper(), 10)}/{g.s(ALNUM, 24)}"
    b = _Builder().add(
        "curl -X POST -H 'Content-type: application/json' --data '{\"text\":\"done\"}' "
    )
    return b.add("https://hooks.slack.com/services/").secret(path).add("\n")


def _p_stripe(g: _Gen) -> _Builder:
    key = g.pick(["sk_live_", "rk_live_"]) + g.s(ALNUM, 99)
    b = _Builder().add("import stripe\nstripe.api_key = '").secret(key)
    return b.add("'\ncustomer = stripe.Customer.create(email=email)\n")


def _p_google(g: _Gen) -> _Builder:
    b = _Builder().add("fetch(`https://maps.googleapis.com/maps/api/geocode/json?address=${q}&key=")
    return b.secret("AIza" + g.s(B64URL, 35)).add("`)")


def _p_npm(g: _Gen) -> _Builder:
    b = _Builder().add("$ cat ~/.npmrc\n//registry.npmjs.org/:_authToken=")
    return b.secret("npm_" + g.s(ALNUM, 36)).add("\nsave-exact=true\n")


def _p_pypi(g: _Gen) -> _Builder:
    tok = "pypi-AgEIcHlwaS5vcmc" + g.s(B64URL, 140)
    b = _Builder().add(
        "[distutils]\nindex-servers = pypi\n\n[pypi]\nusername = __token__\npassword = "
    )
    return b.secret(tok).add("\n")


def _p_huggingface(g: _Gen) -> _Builder:
    b = _Builder().add('from huggingface_hub import login\nlogin(token="')
    return b.secret("hf_" + g.s(string.ascii_letters, 34)).add('")\n')


def _p_sendgrid(g: _Gen) -> _Builder:
    key = f"SG.{g.s(B64URL, 22)}.{g.s(B64URL, 43)}"
    b = _Builder().add("mail:\n  provider: sendgrid\n  key: ").secret(key)
    return b.add("\n  from: noreply@acme.dev\n")


def _p_azure(g: _Gen) -> _Builder:
    b = _Builder().add(
        f"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName={g.word()}"
        "store;AccountKey="
    )
    return b.secret(g.b64(64)).add(";EndpointSuffix=core.windows.net\n")


def _p_vault(g: _Gen) -> _Builder:
    b = _Builder().add("$ vault login -method=oidc\nSuccess! You are now authenticated.\n\n")
    b.add("Key                  Value\n---                  -----\ntoken                ")
    return b.secret("hvs." + g.s(B64URL, 91)).add("\ntoken_duration       768h\n")


def _p_age(g: _Gen) -> _Builder:
    b = _Builder().add("$ age-keygen\n# created: 2026-05-01T09:00:00Z\n# public key: age1")
    b.add(g.s(BECH32.lower(), 58) + "\n")
    return b.secret("AGE-SECRET-KEY-1" + g.s(BECH32, 58)).add("\n")


def _jwt(g: _Gen) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    claims = json.dumps({"sub": g.uuid(), "iat": g.rng.randint(1_700_000_000, 1_800_000_000)})
    payload = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    return f"{header}.{payload}.{g.s(B64URL, 43)}"


def _p_jwt_header(g: _Gen) -> _Builder:
    b = _Builder().add(
        f"curl -s https://api.acme.dev/v1/{g.word()} \\\n  -H 'Authorization: Bearer "
    )
    return b.secret(_jwt(g)).add("' | jq .\n")


def _p_bearer(g: _Gen) -> _Builder:
    b = _Builder().add("GET /v2/items HTTP/1.1\nHost: api.vendor.io\nAuthorization: Bearer ")
    return b.secret(g.s(ALNUM, 40)).add("\nAccept: application/json\n")


def _p_database_url(g: _Gen) -> _Builder:
    scheme = g.pick(["postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqp"])
    user = g.pick(["app", "admin", "root", "svc_api", ""])
    b = _Builder().add(f"DATABASE_URL={scheme}://{user}:").secret(g.password())
    return b.add(f"@{g.host()}:5432/{g.word()}\n")


def _p_env_password(g: _Gen) -> _Builder:
    name = g.pick(["DB_PASSWORD", "PGPASSWORD", "MYSQL_ROOT_PASSWORD", "REDIS_PASS",
                   "SMTP_PASSWORD", "ADMIN_PASSWD", "KEYSTORE_PASSPHRASE"])  # fmt: skip
    b = _Builder().add("\n".join(g.env_noise(5)) + f"\n{name}=")
    return b.secret(g.password()).add("\n" + "\n".join(g.env_noise(3)))


def _p_dotenv(g: _Gen) -> _Builder:
    name = g.pick(["SECRET_KEY", "API_KEY", "JWT_SECRET", "SESSION_SECRET", "APP_SECRET",
                   "CLIENT_SECRET", "WEBHOOK_SECRET", "ENCRYPTION_KEY"])  # fmt: skip
    quote = g.pick(['"', "'", ""])
    b = _Builder().add(f"# .env\nNODE_ENV=production\nPORT=3000\n{name}={quote}")
    return b.secret(g.s(ALNUM, g.rng.randint(32, 64))).add(f"{quote}\nLOG_LEVEL=info\n")


def _p_yaml_config(g: _Gen) -> _Builder:
    b = _Builder().add(f"database:\n  host: {g.host()}\n  port: 5432\n  user: app\n  password: ")
    quote = g.pick(['"', "'", ""])
    return b.add(quote).secret(g.password()).add(f"{quote}\n  pool: 10\n")


def _p_json_pem(g: _Gen) -> _Builder:
    body = "\\n".join(_pem_body(g, 1190))
    key = f"-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----"
    b = _Builder().add('{\n  "type": "service_account",\n  "project_id": "acme-prod",\n')
    b.add(f'  "private_key_id": "{g.sha1()}",\n  "private_key": "').secret(key)
    return b.add('\\n",\n  "client_email": "ci@acme-prod.iam.gserviceaccount.com"\n}')


def _p_pem_file(g: _Gen) -> _Builder:
    kind = g.pick(["RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
    key = f"-----BEGIN {kind}-----\n" + "\n".join(_pem_body(g, 600)) + f"\n-----END {kind}-----"
    b = _Builder().add(f"$ cat certs/{g.word()}.key\n").secret(key)
    return b.add(f"\n$ openssl rsa -in certs/{g.word()}.key -check -noout\n")


def _p_openssh_json(g: _Gen) -> _Builder:
    body = "\\n".join(_pem_body(g, 300))
    key = f"-----BEGIN OPENSSH PRIVATE KEY-----\\n{body}\\n-----END OPENSSH PRIVATE KEY-----"
    b = _Builder().add('{"tool": "Read", "path": "/home/dev/.ssh/id_ed25519", "output": "')
    return b.secret(key).add('\\n"}')


def _p_private_tag(g: _Gen) -> _Builder:
    b = _Builder().add(f"{g.sentence()} <private>")
    return b.secret(f"my recovery code is {g.s(ALNUM, 12)} for {g.word()}").add(
        f"</private> {g.sentence()}"
    )


def _p_python_password(g: _Gen) -> _Builder:
    b = _Builder().add('import psycopg\n\nconn = psycopg.connect(\n    host="db.internal",\n')
    b.add('    user="app",\n    password="').secret(g.password())
    return b.add('",\n)\n')


def _p_cli_password(g: _Gen) -> _Builder:
    style = g.rng.randrange(4)
    pw = g.password().replace("!", "x")
    b = _Builder()
    if style == 0:
        b.add("$ mysql -h db.internal -u root -p").secret(pw).add(" app_production\n")
    elif style == 1:
        b.add("$ curl -u deploy:").secret(pw).add(" https://ci.acme.dev/job/build/\n")
    elif style == 2:
        b.add("$ docker login registry.acme.dev -u ci --password ").secret(pw).add("\n")
    else:
        b.add("$ sshpass -p '").secret(pw).add("' ssh ops@10.0.0.5 uptime\n")
    return b


def _p_basic_auth(g: _Gen) -> _Builder:
    cred = base64.b64encode(f"{g.word()}:{g.password()}".encode()).decode()
    b = _Builder().add(
        "> GET /api/status HTTP/1.1\n> Host: jenkins.acme.dev\n> Authorization: Basic "
    )
    return b.secret(cred).add("\n> User-Agent: curl/8.5.0\n")


def _p_provenance_env(g: _Gen) -> _Builder:
    name = g.pick(["OPENAI_API_KEY", "STRIPE_SECRET", "DATADOG_API_KEY", "SENTRY_AUTH_TOKEN"])
    b = _Builder().add('{"env": {"CI": "true", "' + name + '": "')
    return b.secret(g.s(HEX, 32) + g.s(ALNUM, 8)).add('", "SHELL": "/bin/zsh"}}')


def _p_saas_misc(g: _Gen) -> _Builder:
    choice = g.rng.randrange(6)
    if choice == 0:
        tok = "dop_v1_" + g.s(HEX, 64)
    elif choice == 1:
        tok = "shpat_" + g.s(HEX, 32)
    elif choice == 2:
        tok = "lin_api_" + g.s(ALNUM, 40)
    elif choice == 3:
        tok = "dp.pt." + g.s(ALNUM, 43)
    elif choice == 4:
        tok = f"{g.s('0123456789', 10)}:AA{g.s(B64URL, 33)}"
    else:
        tok = "glsa_" + g.s(ALNUM, 32) + "_" + g.s(HEX, 8)
    b = _Builder().add(f"Configured the {g.word()} integration; credential saved: ")
    return b.secret(tok).add(f" (rotated {g.rng.randint(2, 28)} days ago)\n")


def _p_netrc(g: _Gen) -> _Builder:
    b = _Builder().add("$ cat ~/.netrc\nmachine api.heroku.com\n  login dev@acme.dev\n  password ")
    return b.secret(g.uuid()).add("\n")


def _p_github_header(g: _Gen) -> _Builder:
    b = _Builder().add(
        "curl -sS -H 'Accept: application/vnd.github+json' -H 'Authorization: token "
    )
    return b.secret(_ghp(g)).add(f"' https://api.github.com/repos/acme/{g.word()}/pulls\n")


def _p_query_api_key(g: _Gen) -> _Builder:
    b = _Builder().add(f"GET https://api.weather.example/v1/forecast?q={g.word()}&api_key=")
    return b.secret(g.s(HEX, 32)).add("&units=metric 200 OK (182 ms)\n")


def _p_k8s_secret(g: _Gen) -> _Builder:
    b = _Builder().add(
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {g.word()}-db\ntype: Opaque\ndata:\n"
        "  username: YXBw\n  password: "
    )
    return b.secret(base64.b64encode(g.password().encode()).decode()).add("\n")


def _p_docker_config(g: _Gen) -> _Builder:
    auth = base64.b64encode(f"ci:{g.password()}".encode()).decode()
    b = _Builder().add('{\n  "auths": {\n    "registry.acme.dev": {\n      "auth": "')
    return b.secret(auth).add('"\n    }\n  }\n}\n')


def _p_pgp_key(g: _Gen) -> _Builder:
    body = "\n".join(_pem_body(g, 900))
    key = (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + body + f"\n={g.s(B64, 4)}\n"
        "-----END PGP PRIVATE KEY BLOCK-----"
    )
    return _Builder().add("$ gpg --export-secret-keys --armor dev@acme.dev\n").secret(key).add("\n")


_PLANTERS: dict[str, Callable[[_Gen], _Builder]] = {
    "github-token-in-env": _p_github_env,
    "github-fine-grained-pat": _p_github_fine,
    "github-token-in-git-remote": _p_git_remote,
    "gitlab-token-in-curl": _p_gitlab,
    "aws-credentials": _p_aws_credentials,
    "openai-key-in-python": _p_openai,
    "anthropic-key-export": _p_anthropic,
    "slack-bot-token-yaml": _p_slack,
    "slack-webhook-url": _p_slack_webhook,
    "stripe-key-in-python": _p_stripe,
    "google-api-key-in-js": _p_google,
    "npm-token-npmrc": _p_npm,
    "pypi-token-pypirc": _p_pypi,
    "huggingface-token": _p_huggingface,
    "sendgrid-key-yaml": _p_sendgrid,
    "azure-connection-string": _p_azure,
    "vault-token": _p_vault,
    "age-secret-key": _p_age,
    "jwt-in-authorization-header": _p_jwt_header,
    "bearer-token-http": _p_bearer,
    "database-url-credentials": _p_database_url,
    "password-in-env-dump": _p_env_password,
    "dotenv-secret": _p_dotenv,
    "yaml-password": _p_yaml_config,
    "pem-key-in-json": _p_json_pem,
    "pem-key-file": _p_pem_file,
    "openssh-key-in-json": _p_openssh_json,
    "private-tag": _p_private_tag,
    "python-password-kwarg": _p_python_password,
    "password-on-command-line": _p_cli_password,
    "basic-auth-header": _p_basic_auth,
    "api-key-in-provenance-env": _p_provenance_env,
    "saas-tokens": _p_saas_misc,
    "netrc-password": _p_netrc,
    "github-token-authorization-header": _p_github_header,
    "api-key-in-query-string": _p_query_api_key,
    "kubernetes-secret-data": _p_k8s_secret,
    "docker-config-auth": _p_docker_config,
    "pgp-private-key": _p_pgp_key,
}


# --- benign texts --------------------------------------------------------------------------


def _b_git_log(g: _Gen) -> str:
    lines = []
    for _ in range(g.rng.randint(2, 6)):
        lines += [f"commit {g.sha1()}", "Author: Dev <dev@acme.dev>", "Date:   Tue Mar 3 2026",
                  "", f"    {g.sentence()}", ""]  # fmt: skip
    return "\n".join(lines)


def _b_git_misc(g: _Gen) -> str:
    short = g.sha1()[:7]
    return (
        f"$ git rebase -i HEAD~3\nSuccessfully rebased and updated refs/heads/{g.word()}.\n"
        f"$ git log --oneline -3\n{short} {g.sentence()}\n{g.sha1()[:7]} {g.sentence()}\n"
        f"$ git rev-parse HEAD\n{g.sha1()}\nMerge: {g.sha1()[:12]} {g.sha1()[:12]}\n"
    )


def _b_diff(g: _Gen) -> str:
    name = g.word()
    return (
        f"diff --git a/src/{name}.py b/src/{name}.py\nindex {g.sha1()[:7]}..{g.sha1()[:7]} 100644\n"
        f"--- a/src/{name}.py\n+++ b/src/{name}.py\n@@ -10,7 +10,8 @@ def load(path):\n"
        f"-    token = read_token(path)\n+    token = read_token(path, strict=True)\n"
        f"+    if not token:\n+        raise ValueError('missing token')\n"
        f"     password = getpass.getpass('Password: ')\n     secret = vault.read(key)\n"
    )


def _b_package_lock(g: _Gen) -> str:
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


def _b_yarn_lock(g: _Gen) -> str:
    name = g.word()
    sha1 = g.sha1()
    return (
        f'"{name}@^2.0.0":\n  version "2.3.1"\n  resolved "https://registry.yarnpkg.com/{name}/-/'
        f'{name}-2.3.1.tgz#{sha1}"\n'
        f"  integrity sha1-{base64.b64encode(bytes.fromhex(sha1)).decode()}\n"
    )


def _b_poetry_pip(g: _Gen) -> str:
    pkg = g.word()
    return (
        f"{pkg}==2.31.0 \\\n    --hash=sha256:{g.sha256()} \\\n    --hash=sha256:{g.sha256()}\n"
        f'[[package]]\nname = "{pkg}"\nfiles = [\n    {{file = "{pkg}-2.31.0.tar.gz", '
        f'hash = "sha256:{g.sha256()}"}},\n]\ncontent-hash = "{g.sha256()}"\n'
    )


def _b_go_cargo(g: _Gen) -> str:
    h1 = base64.b64encode(g.rng.randbytes(32)).decode()
    return (
        f"github.com/{g.word()}/{g.word()} v1.4.2 h1:{h1}\n"
        f"github.com/{g.word()}/{g.word()} v1.4.2/go.mod h1:{g.b64(32)}\n"
        f'[[package]]\nname = "{g.word()}"\nversion = "0.4.1"\nsource = "registry+https://github.com/'
        f'rust-lang/crates.io-index"\nchecksum = "{g.sha256()}"\n'
    )


def _b_docker(g: _Gen) -> str:
    return (
        f"$ docker pull python:3.12-slim\n3.12-slim: Pulling from library/python\n"
        f"{g.sha256()[:12]}: Pull complete\nDigest: sha256:{g.sha256()}\n"
        f"Status: Downloaded newer image for python:3.12-slim\n$ docker images\n"
        f"REPOSITORY   TAG         IMAGE ID       CREATED       SIZE\n"
        f"python       3.12-slim   {g.sha256()[:12]}   2 weeks ago   130MB\n"
        f"image: ghcr.io/acme/{g.word()}@sha256:{g.sha256()}\n"
    )


def _b_uuids(g: _Gen) -> str:
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


def _b_base64_blob(g: _Gen) -> str:
    blob = g.b64(g.rng.randint(200, 900))
    style = g.rng.randrange(3)
    if style == 0:
        return f'<img src="data:image/png;base64,{blob}" alt="chart">'
    if style == 1:
        lines = [blob[i : i + 64] for i in range(0, len(blob), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    return f'{{"attachment": {{"filename": "report.pdf", "content": "{blob}"}}}}'


def _b_ssh_public(g: _Gen) -> str:
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


def _b_minified(g: _Gen) -> str:
    ids = [g.s(string.ascii_letters, g.rng.randint(1, 3)) for _ in range(30)]
    body = ";".join(
        f'var {a}=function({b},{c}){{return {b}.{g.word()}({c},"{g.s(ALNUM, 20)}")}}'
        for a, b, c in zip(ids[::3], ids[1::3], ids[2::3], strict=False)
    )
    return f'!function(e){{"use strict";{body};e.key="{g.word()}";e.token=null}}(window);'


def _b_pytest(g: _Gen) -> str:
    return (
        f"============================= test session starts ==============================\n"
        f"collected {g.rng.randint(10, 400)} items\n\ntests/test_{g.word()}.py ....F...\n\n"
        f"    def test_token_refresh(client):\n>       assert client.refresh_token() is not None\n"
        f"E       KeyError: 'access_token'\nE       assert None is not None\n"
        f"FAILED tests/test_{g.word()}.py::test_password_reset - KeyError: 'token'\n"
        f"====== 1 failed, {g.rng.randint(10, 300)} passed in {g.rng.randint(1, 90)}.21s ======\n"
    )


def _b_http_etag(g: _Gen) -> str:
    return (
        f'HTTP/2 200\ncontent-type: application/json\netag: "{g.s(HEX, 32)}"\n'
        f"x-request-id: {g.uuid()}\nx-amz-request-id: {g.s(ALNUM.upper(), 16)}\n"
        f"x-amz-id-2: {g.b64(48)}\nlast-modified: Tue, 03 Mar 2026 10:00:00 GMT\n"
        f'ETag: W/"{g.s(HEX, 40)}"\n'
    )


def _b_s3_listing(g: _Gen) -> str:
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


def _b_env_clean(g: _Gen) -> str:
    return "$ env\n" + "\n".join(g.env_noise(g.rng.randint(8, 16)))


def _b_code_refs(g: _Gen) -> str:
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


def _b_placeholders(g: _Gen) -> str:
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


def _b_k8s(g: _Gen) -> str:
    safe = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' alphabet for generated names
    pod = f"{g.word()}-{g.s(safe, 10)}-{g.s(safe, 5)}"
    return (
        f"$ kubectl get pods\nNAME                          READY   STATUS    RESTARTS   AGE\n"
        f"{pod}   1/1     Running   0          3d\n$ kubectl describe pod {pod}\n"
        f"Container ID:  containerd://{g.sha256()}\nImage ID:      docker.io/library/nginx@sha256:"
        f"{g.sha256()}\nControlled By:  ReplicaSet/{pod[:-6]}\nuid: {g.uuid()}\n"
    )


def _b_prose(g: _Gen) -> str:
    return " ".join(g.sentence() for _ in range(g.rng.randint(2, 8)))


def _b_terraform(g: _Gen) -> str:
    return (
        f'resource "aws_instance" "{g.word()}" {{\n  ami           = "ami-{g.s(HEX, 17)}"\n'
        f'  instance_type = "t3.micro"\n  subnet_id     = "subnet-{g.s(HEX, 17)}"\n}}\n'
        f"aws_instance.{g.word()}: Creation complete after 32s [id=i-{g.s(HEX, 17)}]\n"
        f'"arn": "arn:aws:iam::{g.s("0123456789", 12)}:role/{g.word()}-deployer"\n'
    )


def _b_traceback(g: _Gen) -> str:
    return (
        f'Traceback (most recent call last):\n  File "/srv/app/{g.word()}.py", '
        f"line {g.rng.randint(1, 900)}, "
        f"in refresh\n    token = self._client.fetch_token(token_url, client_id=cid)\n"
        "oauthlib.oauth2.rfc6749.errors.InvalidGrantError: (invalid_grant) "
        "Token has been expired or revoked.\n"
        f"request_id={g.uuid()} trace={g.s(HEX, 32)}\n"
    )


def _b_stripe_ids(g: _Gen) -> str:
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


def _b_lfs_pointer(g: _Gen) -> str:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{g.sha256()}\n"
        f"size {g.rng.randint(1000, 10**8)}\n"
    )


def _b_talk_about_secrets(g: _Gen) -> str:
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


def _b_log_ids(g: _Gen) -> str:
    lines = [
        f"2026-03-03T10:{g.rng.randint(10, 59)}:00Z INFO request_id={g.s(ALNUM, 22)} "
        f"span={g.s(HEX, 16)} user={g.uuid()} path=/api/{g.word()} status=200"
        for _ in range(g.rng.randint(3, 8))
    ]
    return "\n".join(lines)


_BENIGN: list[Callable[[_Gen], str]] = [
    _b_git_log, _b_git_misc, _b_diff, _b_package_lock, _b_yarn_lock, _b_poetry_pip, _b_go_cargo,
    _b_docker, _b_uuids, _b_base64_blob, _b_ssh_public, _b_minified, _b_pytest, _b_http_etag,
    _b_s3_listing, _b_env_clean, _b_code_refs, _b_placeholders, _b_k8s, _b_prose, _b_terraform,
    _b_traceback, _b_stripe_ids, _b_lfs_pointer, _b_talk_about_secrets, _b_log_ids,
]  # fmt: skip
