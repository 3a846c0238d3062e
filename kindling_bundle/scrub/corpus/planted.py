"""Planted texts: each kind a fake secret (or two) in the surroundings an agent's memory would
hold it in (an env dump, a git remote, a curl command, a JSON config, a PEM file, ...)."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable

from kindling_bundle.scrub.corpus.fakes import ALNUM, B64, B64URL, BECH32, HEX, Builder, Gen


def _ghp(g: Gen) -> str:
    return "ghp_" + g.s(ALNUM, 36)


def _aws_pair(g: Gen) -> tuple[str, str]:
    return "AKIA" + g.s("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16), g.s(B64, 40)


def _pem_body(g: Gen, nbytes: int) -> list[str]:
    data = g.b64(nbytes)
    return [data[i : i + 64] for i in range(0, len(data), 64)]


def _p_github_env(g: Gen) -> Builder:
    b = Builder().add("$ env | sort\n" + "\n".join(g.env_noise(6)) + "\nGITHUB_TOKEN=")
    return b.secret(_ghp(g)).add("\n" + "\n".join(g.env_noise(3)) + "\n")


def _p_github_fine(g: Gen) -> Builder:
    tok = "github_pat_" + g.s(ALNUM, 22) + "_" + g.s(ALNUM, 59)
    b = Builder().add("gh auth login --with-token <<< ")
    return b.secret(tok).add("\n✓ Logged in to github.com as dev\n")


def _p_git_remote(g: Gen) -> Builder:
    tok = g.pick(["ghs_", "gho_", "ghu_"]) + g.s(ALNUM, 36)
    b = Builder().add("$ git remote -v\norigin\thttps://x-access-token:")
    b.secret(tok).add(f"@github.com/acme/{g.word()}.git (fetch)\n")
    return b.add(f"upstream\tgit@github.com:acme/{g.word()}.git (push)\n")


def _p_gitlab(g: Gen) -> Builder:
    b = Builder().add('curl --header "PRIVATE-TOKEN: ')
    b.secret("glpat-" + g.s(B64URL, 20))
    return b.add(f'" "https://gitlab.com/api/v4/projects/{g.rng.randint(100, 99999)}/pipelines"')


def _p_aws_credentials(g: Gen) -> Builder:
    key_id, secret = _aws_pair(g)
    style = g.rng.randrange(3)
    b = Builder()
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


def _p_openai(g: Gen) -> Builder:
    key = "sk-proj-" + g.s(B64URL, 74) + "T3BlbkFJ" + g.s(B64URL, 74)
    b = Builder().add('from openai import OpenAI\n\nclient = OpenAI(\n    api_key="')
    return b.secret(key).add('",\n)\nresp = client.responses.create(model="gpt-5", input="hi")\n')


def _p_anthropic(g: Gen) -> Builder:
    key = "sk-ant-api03-" + g.s(B64URL, 93) + "AA"
    b = Builder().add("export ANTHROPIC_API_KEY=").secret(key)
    return b.add("\nclaude --model opus\n")


def _p_slack(g: Gen) -> Builder:
    tok = f"xoxb-{g.s('0123456789', 12)}-{g.s('0123456789', 13)}-{g.s(ALNUM, 24)}"
    b = Builder().add("slack:\n  channel: '#deploys'\n  bot_token: ").secret(tok)
    return b.add("\n  notify_on: [failure]\n")


def _p_slack_webhook(g: Gen) -> Builder:
    path = f"T{g.s(ALNUM.upper(), 10)}/B{g.s(ALNUM.upper(), 10)}/{g.s(ALNUM, 24)}"
    b = Builder().add(
        "curl -X POST -H 'Content-type: application/json' --data '{\"text\":\"done\"}' "
    )
    return b.add("https://hooks.slack.com/services/").secret(path).add("\n")


def _p_stripe(g: Gen) -> Builder:
    key = g.pick(["sk_live_", "rk_live_"]) + g.s(ALNUM, 99)
    b = Builder().add("import stripe\nstripe.api_key = '").secret(key)
    return b.add("'\ncustomer = stripe.Customer.create(email=email)\n")


def _p_google(g: Gen) -> Builder:
    b = Builder().add("fetch(`https://maps.googleapis.com/maps/api/geocode/json?address=${q}&key=")
    return b.secret("AIza" + g.s(B64URL, 35)).add("`)")


def _p_npm(g: Gen) -> Builder:
    b = Builder().add("$ cat ~/.npmrc\n//registry.npmjs.org/:_authToken=")
    return b.secret("npm_" + g.s(ALNUM, 36)).add("\nsave-exact=true\n")


def _p_pypi(g: Gen) -> Builder:
    tok = "pypi-AgEIcHlwaS5vcmc" + g.s(B64URL, 140)
    b = Builder().add(
        "[distutils]\nindex-servers = pypi\n\n[pypi]\nusername = __token__\npassword = "
    )
    return b.secret(tok).add("\n")


def _p_huggingface(g: Gen) -> Builder:
    b = Builder().add('from huggingface_hub import login\nlogin(token="')
    return b.secret("hf_" + g.s(string.ascii_letters, 34)).add('")\n')


def _p_sendgrid(g: Gen) -> Builder:
    key = f"SG.{g.s(B64URL, 22)}.{g.s(B64URL, 43)}"
    b = Builder().add("mail:\n  provider: sendgrid\n  key: ").secret(key)
    return b.add("\n  from: noreply@acme.dev\n")


def _p_azure(g: Gen) -> Builder:
    b = Builder().add(
        f"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName={g.word()}"
        "store;AccountKey="
    )
    return b.secret(g.b64(64)).add(";EndpointSuffix=core.windows.net\n")


def _p_vault(g: Gen) -> Builder:
    b = Builder().add("$ vault login -method=oidc\nSuccess! You are now authenticated.\n\n")
    b.add("Key                  Value\n---                  -----\ntoken                ")
    return b.secret("hvs." + g.s(B64URL, 91)).add("\ntoken_duration       768h\n")


def _p_age(g: Gen) -> Builder:
    b = Builder().add("$ age-keygen\n# created: 2026-05-01T09:00:00Z\n# public key: age1")
    b.add(g.s(BECH32.lower(), 58) + "\n")
    return b.secret("AGE-SECRET-KEY-1" + g.s(BECH32, 58)).add("\n")


def _jwt(g: Gen) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    claims = json.dumps({"sub": g.uuid(), "iat": g.rng.randint(1_700_000_000, 1_800_000_000)})
    payload = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    return f"{header}.{payload}.{g.s(B64URL, 43)}"


def _p_jwt_header(g: Gen) -> Builder:
    b = Builder().add(
        f"curl -s https://api.acme.dev/v1/{g.word()} \\\n  -H 'Authorization: Bearer "
    )
    return b.secret(_jwt(g)).add("' | jq .\n")


def _p_bearer(g: Gen) -> Builder:
    b = Builder().add("GET /v2/items HTTP/1.1\nHost: api.vendor.io\nAuthorization: Bearer ")
    return b.secret(g.s(ALNUM, 40)).add("\nAccept: application/json\n")


def _p_database_url(g: Gen) -> Builder:
    scheme = g.pick(["postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqp"])
    user = g.pick(["app", "admin", "root", "svc_api", ""])
    b = Builder().add(f"DATABASE_URL={scheme}://{user}:").secret(g.password())
    return b.add(f"@{g.host()}:5432/{g.word()}\n")


def _p_env_password(g: Gen) -> Builder:
    name = g.pick(["DB_PASSWORD", "PGPASSWORD", "MYSQL_ROOT_PASSWORD", "REDIS_PASS",
                   "SMTP_PASSWORD", "ADMIN_PASSWD", "KEYSTORE_PASSPHRASE"])  # fmt: skip
    b = Builder().add("\n".join(g.env_noise(5)) + f"\n{name}=")
    return b.secret(g.password()).add("\n" + "\n".join(g.env_noise(3)))


def _p_dotenv(g: Gen) -> Builder:
    name = g.pick(["SECRET_KEY", "API_KEY", "JWT_SECRET", "SESSION_SECRET", "APP_SECRET",
                   "CLIENT_SECRET", "WEBHOOK_SECRET", "ENCRYPTION_KEY"])  # fmt: skip
    quote = g.pick(['"', "'", ""])
    b = Builder().add(f"# .env\nNODE_ENV=production\nPORT=3000\n{name}={quote}")
    return b.secret(g.s(ALNUM, g.rng.randint(32, 64))).add(f"{quote}\nLOG_LEVEL=info\n")


def _p_yaml_config(g: Gen) -> Builder:
    b = Builder().add(f"database:\n  host: {g.host()}\n  port: 5432\n  user: app\n  password: ")
    quote = g.pick(['"', "'", ""])
    return b.add(quote).secret(g.password()).add(f"{quote}\n  pool: 10\n")


def _p_json_pem(g: Gen) -> Builder:
    body = "\\n".join(_pem_body(g, 1190))
    key = f"-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----"
    b = Builder().add('{\n  "type": "service_account",\n  "project_id": "acme-prod",\n')
    b.add(f'  "private_key_id": "{g.sha1()}",\n  "private_key": "').secret(key)
    return b.add('\\n",\n  "client_email": "ci@acme-prod.iam.gserviceaccount.com"\n}')


def _p_pem_file(g: Gen) -> Builder:
    kind = g.pick(["RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
    key = f"-----BEGIN {kind}-----\n" + "\n".join(_pem_body(g, 600)) + f"\n-----END {kind}-----"
    b = Builder().add(f"$ cat certs/{g.word()}.key\n").secret(key)
    return b.add(f"\n$ openssl rsa -in certs/{g.word()}.key -check -noout\n")


def _p_openssh_json(g: Gen) -> Builder:
    body = "\\n".join(_pem_body(g, 300))
    key = f"-----BEGIN OPENSSH PRIVATE KEY-----\\n{body}\\n-----END OPENSSH PRIVATE KEY-----"
    b = Builder().add('{"tool": "Read", "path": "/home/dev/.ssh/id_ed25519", "output": "')
    return b.secret(key).add('\\n"}')


def _p_private_tag(g: Gen) -> Builder:
    b = Builder().add(f"{g.sentence()} <private>")
    return b.secret(f"my recovery code is {g.s(ALNUM, 12)} for {g.word()}").add(
        f"</private> {g.sentence()}"
    )


def _p_python_password(g: Gen) -> Builder:
    b = Builder().add('import psycopg\n\nconn = psycopg.connect(\n    host="db.internal",\n')
    b.add('    user="app",\n    password="').secret(g.password())
    return b.add('",\n)\n')


def _p_cli_password(g: Gen) -> Builder:
    style = g.rng.randrange(4)
    pw = g.password().replace("!", "x")
    b = Builder()
    if style == 0:
        b.add("$ mysql -h db.internal -u root -p").secret(pw).add(" app_production\n")
    elif style == 1:
        b.add("$ curl -u deploy:").secret(pw).add(" https://ci.acme.dev/job/build/\n")
    elif style == 2:
        b.add("$ docker login registry.acme.dev -u ci --password ").secret(pw).add("\n")
    else:
        b.add("$ sshpass -p '").secret(pw).add("' ssh ops@10.0.0.5 uptime\n")
    return b


def _p_basic_auth(g: Gen) -> Builder:
    cred = base64.b64encode(f"{g.word()}:{g.password()}".encode()).decode()
    b = Builder().add(
        "> GET /api/status HTTP/1.1\n> Host: jenkins.acme.dev\n> Authorization: Basic "
    )
    return b.secret(cred).add("\n> User-Agent: curl/8.5.0\n")


def _p_provenance_env(g: Gen) -> Builder:
    name = g.pick(["OPENAI_API_KEY", "STRIPE_SECRET", "DATADOG_API_KEY", "SENTRY_AUTH_TOKEN"])
    b = Builder().add('{"env": {"CI": "true", "' + name + '": "')
    return b.secret(g.s(HEX, 32) + g.s(ALNUM, 8)).add('", "SHELL": "/bin/zsh"}}')


def _p_saas_misc(g: Gen) -> Builder:
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
    b = Builder().add(f"Configured the {g.word()} integration; credential saved: ")
    return b.secret(tok).add(f" (rotated {g.rng.randint(2, 28)} days ago)\n")


def _p_netrc(g: Gen) -> Builder:
    b = Builder().add("$ cat ~/.netrc\nmachine api.heroku.com\n  login dev@acme.dev\n  password ")
    return b.secret(g.uuid()).add("\n")


def _p_github_header(g: Gen) -> Builder:
    b = Builder().add("curl -sS -H 'Accept: application/vnd.github+json' -H 'Authorization: token ")
    return b.secret(_ghp(g)).add(f"' https://api.github.com/repos/acme/{g.word()}/pulls\n")


def _p_query_api_key(g: Gen) -> Builder:
    b = Builder().add(f"GET https://api.weather.example/v1/forecast?q={g.word()}&api_key=")
    return b.secret(g.s(HEX, 32)).add("&units=metric 200 OK (182 ms)\n")


def _p_k8s_secret(g: Gen) -> Builder:
    b = Builder().add(
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {g.word()}-db\ntype: Opaque\ndata:\n"
        "  username: YXBw\n  password: "
    )
    return b.secret(base64.b64encode(g.password().encode()).decode()).add("\n")


def _p_docker_config(g: Gen) -> Builder:
    auth = base64.b64encode(f"ci:{g.password()}".encode()).decode()
    b = Builder().add('{\n  "auths": {\n    "registry.acme.dev": {\n      "auth": "')
    return b.secret(auth).add('"\n    }\n  }\n}\n')


def _p_pgp_key(g: Gen) -> Builder:
    body = "\n".join(_pem_body(g, 900))
    key = (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + body + f"\n={g.s(B64, 4)}\n"
        "-----END PGP PRIVATE KEY BLOCK-----"
    )
    return Builder().add("$ gpg --export-secret-keys --armor dev@acme.dev\n").secret(key).add("\n")


PLANTERS: dict[str, Callable[[Gen], Builder]] = {
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
