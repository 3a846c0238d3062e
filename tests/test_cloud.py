"""Bundles in object storage, against a real S3 API server (moto) on 127.0.0.1, never a real cloud.

The server (tests/moto_server.py) runs as its own process on a free loopback port and checks
request signatures against its own IAM users, so wrong credentials are refused as S3 refuses them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import s3fs

from conftest import dump_tables
from kindling_bundle import (
    BundleOptions,
    import_bundle,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from kindling_bundle.db.connection import open_store
from kindling_bundle.db.sample import generate_sample
from kindling_bundle.errors import BundleError, StorageError
from kindling_bundle.io.storage import (
    HEAD_BLOCK_SIZE,
    UPLOAD_PART_SIZE,
    is_url,
    open_destination,
    open_source,
    parse_storage_options,
)

MOTO_SERVER = Path(__file__).with_name("moto_server.py")
MiB = 2**20

# No test may reach a real endpoint, read the developer's AWS files, or ask the EC2 metadata
# service (a non-loopback address) for credentials.
ISOLATED_ENV = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CLEARED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key: str
    secret: str

    @property
    def options(self) -> dict[str, str]:
        """storage_options that reach this server with valid credentials."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    def fs(self) -> s3fs.S3FileSystem:
        """A fresh client, to look at the bucket independently of the code under test."""
        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)

    def served(self, bucket: str, key: str) -> int:
        """Response-body bytes the server has sent for GETs of this object since the reset."""
        with urllib.request.urlopen(f"{self.endpoint}/_served") as response:
            return json.load(response).get(f"/{bucket}/{key}", 0)

    def reset_served(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/_served", data=b"", method="POST")
        urllib.request.urlopen(request).close()


def _isolated_environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    return {**env, **ISOLATED_ENV}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with one IAM user allowed s3:*; its keys are the good ones."""
    log = tmp_path_factory.mktemp("moto") / "server.log"
    # The first three actions are unauthenticated: they create the user the tests sign as.
    env = {**_isolated_environ(), "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, str(MOTO_SERVER)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.strip().isdigit():
            server.wait(timeout=10)
            pytest.fail(f"the moto server did not start: {log.read_text()[-2000:]}")
        endpoint = f"http://127.0.0.1:{int(line)}"
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="backup")
        access = iam.create_access_key(UserName="backup")["AccessKey"]
        iam.put_user_policy(
            UserName="backup",
            PolicyName="s3-all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        yield S3Server(endpoint, access["AccessKeyId"], access["SecretAccessKey"])
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(autouse=True)
def _no_real_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in ISOLATED_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3_server.fs().mkdir(name)
    return name


def payload(size: int) -> bytes:
    """Incompressible, position-dependent bytes: a wrong offset or a lost part shows."""
    return os.urandom(size)


def restored(path: Path) -> dict[str, list[tuple]]:
    """Every row of a restored database, less the migrations' applied_at (its creation time)."""
    tables = dump_tables(path)
    tables["schema_migrations"] = [row[:-1] for row in tables["schema_migrations"]]
    return tables


def write_in_chunks(stream, data: bytes, chunk: int = 256 * 1024) -> None:
    for start in range(0, len(data), chunk):
        stream.write(data[start : start + chunk])


# --- streaming to and from a bucket ---------------------------------------------------------


@pytest.mark.parametrize("size", [3000, 2 * UPLOAD_PART_SIZE + 12345], ids=["small", "multipart"])
def test_upload_then_download_gives_the_same_bytes(s3_server: S3Server, bucket: str, size: int):
    url = f"s3://{bucket}/nightly/kindling.kbundle"
    data = payload(size)
    with open_destination(url, storage_options=s3_server.options) as stream:
        write_in_chunks(stream, data)

        assert stream.name == url  # so that messages about the stream name the URL

    fs = s3_server.fs()
    assert fs.ls(f"{bucket}/nightly") == [f"{bucket}/nightly/kindling.kbundle"]
    assert fs.info(url)["size"] == size
    with open_source(url, storage_options=s3_server.options) as stream:
        assert stream.name == url
        received = b"".join(iter(lambda: stream.read(100_000), b""))
    assert received == data


def test_failed_upload_leaves_no_object_and_no_pending_parts(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/kindling.kbundle"
    with (
        pytest.raises(RuntimeError, match="export failed half way"),
        open_destination(url, storage_options=s3_server.options) as stream,
    ):
        write_in_chunks(stream, payload(UPLOAD_PART_SIZE + 3 * MiB))  # one part is uploaded
        raise RuntimeError("export failed half way")

    fs = s3_server.fs()
    assert not fs.exists(url)
    assert fs.ls(bucket) == []
    assert fs.list_multipart_uploads(bucket) == []


def test_failed_upload_keeps_the_previous_backup(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/kindling.kbundle"
    previous = payload(1000)
    with open_destination(url, storage_options=s3_server.options) as stream:
        stream.write(previous)

    with (
        pytest.raises(KeyboardInterrupt),
        open_destination(url, storage_options=s3_server.options) as stream,
    ):
        write_in_chunks(stream, payload(UPLOAD_PART_SIZE + MiB))
        raise KeyboardInterrupt

    assert s3_server.fs().cat(url) == previous


def test_killed_upload_leaves_no_object(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/kindling.kbundle"
    script = textwrap.dedent(
        f"""
        import os, signal
        from kindling_bundle.io.storage import open_destination
        with open_destination({url!r}, storage_options={s3_server.options!r}) as stream:
            for _ in range(12):
                stream.write(os.urandom(2**20))
            print("written", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.stdout == b"written\n", done.stderr.decode()
    assert done.returncode == -9

    fs = s3_server.fs()
    assert not fs.exists(url)
    assert fs.ls(bucket) == []
    # The parts already sent stay invisible in an unfinished multipart upload until a bucket
    # lifecycle rule (README) or a later abort removes them.
    assert [upload["Key"] for upload in fs.list_multipart_uploads(bucket)] == ["kindling.kbundle"]


def test_reading_the_start_of_an_object_fetches_only_one_block(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/big.kbundle"
    size = 24 * MiB
    s3_server.fs().pipe(url, payload(size))

    s3_server.reset_served()
    with open_source(url, storage_options=s3_server.options, block_size=HEAD_BLOCK_SIZE) as stream:
        head = stream.read(4096)
        served_for_head = s3_server.served(bucket, "big.kbundle")
        rest = b"".join(iter(lambda: stream.read(MiB), b""))

    assert len(head) == 4096
    assert 4096 <= served_for_head <= HEAD_BLOCK_SIZE + 4096
    assert len(head) + len(rest) == size
    assert s3_server.served(bucket, "big.kbundle") >= size  # the counter does see a full read


def test_streaming_read_keeps_memory_flat_and_writes_no_local_copy(
    s3_server: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    url = f"s3://{bucket}/big.kbundle"
    size = 24 * MiB
    s3_server.fs().pipe(url, payload(size))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)

    total = 0
    tracemalloc.start()
    try:
        with open_source(url, storage_options=s3_server.options, block_size=MiB) as stream:
            while chunk := stream.read(64 * 1024):
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert total == size
    assert peak < size / 3, f"peak {peak / MiB:.1f} MiB while streaming {size / MiB:.0f} MiB"
    assert list(scratch.iterdir()) == []


# --- bundles through a bucket, with the library ---------------------------------------------


def test_bundle_through_a_bucket_restores_the_same_database(
    s3_server: S3Server, bucket: str, sample_db: Path, tmp_path: Path
):
    url = f"s3://{bucket}/kindling.kbundle"
    local = tmp_path / "local.kbundle"
    with open_store(sample_db, readonly=True) as conn:
        written = write_bundle(conn, local, BundleOptions(created_at=1_700_000_000_000))
        with open_destination(url, storage_options=s3_server.options) as out:
            write_bundle(conn, out, BundleOptions(created_at=1_700_000_000_000))
    assert s3_server.fs().cat(url) == local.read_bytes()  # the very same bytes

    with open_source(url, storage_options=s3_server.options, block_size=HEAD_BLOCK_SIZE) as src:
        assert read_manifest(src) == written
    with open_source(url, storage_options=s3_server.options) as src:
        report = verify_bundle(src)
    assert report.ok, report.problems
    assert report.source == url

    from_bucket, from_file = tmp_path / "from-bucket.db", tmp_path / "from-file.db"
    with (
        open_store(from_bucket) as conn,
        open_source(url, storage_options=s3_server.options) as src,
    ):
        import_bundle(conn, src)
    with open_store(from_file) as conn:
        import_bundle(conn, local)
    assert restored(from_bucket) == restored(from_file)
    assert len(restored(from_bucket)["observations"]) == 1500


def test_damaged_bundle_in_a_bucket_is_named_by_its_url(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/not-a-bundle.kbundle"
    s3_server.fs().pipe(url, b"plain text, not zstd")
    with (
        pytest.raises(BundleError, match=rf"^{url}: not a bundle"),
        open_source(url, storage_options=s3_server.options) as src,
    ):
        read_manifest(src)


# --- the command line: back up to a bucket, restore from it --------------------------------


def cli_env(server: S3Server, **extra: str) -> dict[str, str]:
    """The CLI's environment: the good credentials in the standard AWS variables, nothing else."""
    return {
        **_isolated_environ(),
        "AWS_ACCESS_KEY_ID": server.key,
        "AWS_SECRET_ACCESS_KEY": server.secret,
        **extra,
    }


def test_cli_backup_to_a_bucket_and_restore_gives_the_same_database(
    s3_server: S3Server, bucket: str, sample_db: Path, tmp_path: Path, run_cli
):
    url = f"s3://{bucket}/nightly/kindling.kbundle"
    env = cli_env(s3_server)
    endpoint = ["--endpoint-url", s3_server.endpoint]
    stamp = ["--created-at", "1700000000000"]

    done = run_cli("export", "--db", sample_db, *stamp, url, *endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert f"to {url}: 1500 observations" in done.stdout.decode()
    local = tmp_path / "local.kbundle"
    assert run_cli("export", "--db", sample_db, *stamp, local, env=env).returncode == 0

    fs = s3_server.fs()
    assert fs.ls(f"{bucket}/nightly") == [f"{bucket}/nightly/kindling.kbundle"]
    assert fs.cat(url) == local.read_bytes()

    # The endpoint may also come from the standard AWS_ENDPOINT_URL variable.
    with_endpoint_env = cli_env(s3_server, AWS_ENDPOINT_URL=s3_server.endpoint)
    done = run_cli("inspect", "--json", url, env=with_endpoint_env)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)["manifest"]
    records = {entry["entity"]: entry["records"] for entry in manifest["entities"]}
    assert records["observations"] == 1500

    done = run_cli("verify", url, *endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(f"{url}: valid (")

    from_bucket, from_file = tmp_path / "from-bucket.db", tmp_path / "from-file.db"
    done = run_cli("import", "--db", from_bucket, url, *endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert run_cli("import", "--db", from_file, local, env=env).returncode == 0
    assert restored(from_bucket) == restored(from_file)


@pytest.fixture(scope="module")
def large_bundle(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A bundle of a few MiB, many times the block that inspect fetches."""
    folder = tmp_path_factory.mktemp("large")
    generate_sample(folder / "large.db", observations=20000, seed=3)
    with open_store(folder / "large.db", readonly=True) as conn:
        write_bundle(conn, folder / "large.kbundle", BundleOptions(created_at=1_700_000_000_000))
    return (folder / "large.kbundle").read_bytes()


def test_cli_inspect_fetches_only_the_start_of_the_object(
    s3_server: S3Server, bucket: str, large_bundle: bytes, run_cli
):
    url = f"s3://{bucket}/large.kbundle"
    s3_server.fs().pipe(url, large_bundle)
    env = cli_env(s3_server)

    s3_server.reset_served()
    done = run_cli("inspect", url, "--endpoint-url", s3_server.endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert "observations" in done.stdout.decode()
    inspected = s3_server.served(bucket, "large.kbundle")
    assert 0 < inspected <= 2 * HEAD_BLOCK_SIZE < len(large_bundle) / 4

    s3_server.reset_served()
    done = run_cli("verify", url, "--endpoint-url", s3_server.endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert s3_server.served(bucket, "large.kbundle") >= len(large_bundle)


def test_cli_failures_are_one_line_and_leave_nothing(
    s3_server: S3Server, bucket: str, sample_db: Path, run_cli
):
    url = f"s3://{bucket}/kindling.kbundle"
    env = cli_env(s3_server)
    endpoint = ["--endpoint-url", s3_server.endpoint]

    wrong_secret = ["--storage-option", f"key={s3_server.key}", "--storage-option", "secret=x"]
    done = run_cli("export", "--db", sample_db, url, *endpoint, *wrong_secret, env=env)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        f"kindling-bundle: error: cannot write {url}: access denied (The request signature we "
        "calculated does not match the signature you provided. Check your key and signing "
        "method.); check the credentials (environment, AWS config files, --storage-option) "
        "and the bucket's permissions"
    ]
    assert s3_server.fs().ls(bucket) == []

    missing = "s3://no-such-bucket-here/kindling.kbundle"
    for command in (["export", "--db", sample_db, missing], ["import", "--db", "x.db", missing]):
        done = run_cli(*command, *endpoint, env=env)
        assert done.returncode == 1
        verb = "write" if command[0] == "export" else "read"
        assert done.stderr.decode().splitlines() == [
            f"kindling-bundle: error: cannot {verb} {missing}: the specified bucket does not exist"
        ]

    done = run_cli("inspect", url, *endpoint, "--storage-option", "no-equals-sign", env=env)
    assert done.returncode == 2
    assert "--storage-option" in done.stderr.decode()

    done = run_cli("inspect", url, *endpoint, "--storage-option", "colour=blue", env=env)
    assert done.returncode == 1
    [line] = done.stderr.decode().splitlines()
    assert line.startswith(f"kindling-bundle: error: cannot read {url}: bad storage option (")
    assert "colour" in line


def test_cli_encrypted_backup_to_a_bucket_and_restore(
    s3_server: S3Server, bucket: str, sample_db: Path, tmp_path: Path, run_cli
):
    """Encrypt to your own SSH key and archive to S3 (README's recipe), then restore."""
    ssh = tmp_path / "id_ed25519"
    made = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", ssh], capture_output=True
    )
    assert made.returncode == 0, made.stderr
    url = f"s3://{bucket}/nightly/kindling.kbundle"
    env = cli_env(s3_server)
    endpoint = ["--endpoint-url", s3_server.endpoint]
    stamp = ["--created-at", "1700000000000"]

    args = ("-R", f"{ssh}.pub", *stamp, url, *endpoint)
    done = run_cli("export", "--db", sample_db, *args, env=env)
    assert done.returncode == 0, done.stderr
    plain = tmp_path / "plain.kbundle"
    assert run_cli("export", "--db", sample_db, *stamp, plain, env=env).returncode == 0
    stored = s3_server.fs().cat(url)
    assert stored.startswith(b"age-encryption.org/v1\n")
    decrypted = subprocess.run(["age", "-d", "-i", ssh], input=stored, capture_output=True)
    assert decrypted.stdout == plain.read_bytes()

    done = run_cli("inspect", url, *endpoint, env=env)
    assert done.returncode == 1
    assert "encrypted: age, to 1 recipient (ssh-ed25519)" in done.stdout.decode()
    done = run_cli("verify", "-i", ssh, url, *endpoint, env=env)
    assert done.returncode == 0, done.stderr

    from_bucket, from_file = tmp_path / "from-bucket.db", tmp_path / "from-file.db"
    done = run_cli("import", "--db", from_bucket, "-i", ssh, url, *endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert run_cli("import", "--db", from_file, plain, env=env).returncode == 0
    assert restored(from_bucket) == restored(from_file)


# --- one clear line when it cannot work ----------------------------------------------------


def _one_line(error: pytest.ExceptionInfo[StorageError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_wrong_credentials_are_one_clear_line(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/kindling.kbundle"
    s3_server.fs().pipe(url, b"bundle")
    wrong = {**s3_server.options, "secret": "not-the-secret"}
    unknown = {**s3_server.options, "key": "AKIAUNKNOWNKEY000000"}

    with pytest.raises(StorageError) as read_error, open_source(url, storage_options=wrong):
        pass
    assert _one_line(read_error).startswith(f"cannot read {url}: access denied")
    assert "credentials" in str(read_error.value)

    with (
        pytest.raises(StorageError) as write_error,
        open_destination(url, storage_options=unknown) as stream,
    ):
        stream.write(b"new bundle")
    message = _one_line(write_error)
    assert message.startswith(f"cannot write {url}: access denied")
    assert "Access Key Id you provided does not exist" in message
    assert s3_server.fs().cat(url) == b"bundle"


def test_no_credentials_at_all_is_one_clear_line(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/kindling.kbundle"
    with (
        pytest.raises(StorageError) as error,
        open_destination(url, storage_options={"endpoint_url": s3_server.endpoint}) as out,
    ):
        out.write(b"bundle")
    message = _one_line(error)
    assert message.startswith(f"cannot write {url}: no credentials found; set AWS_ACCESS_KEY_ID")


def test_missing_bucket_is_one_clear_line(s3_server: S3Server):
    url = "s3://no-such-bucket-here/kindling.kbundle"
    with (
        pytest.raises(StorageError) as read_error,
        open_source(url, storage_options=s3_server.options),
    ):
        pass
    assert _one_line(read_error) == f"cannot read {url}: the specified bucket does not exist"

    with (
        pytest.raises(StorageError) as write_error,
        open_destination(url, storage_options=s3_server.options) as stream,
    ):
        stream.write(b"bundle")
    assert _one_line(write_error) == f"cannot write {url}: the specified bucket does not exist"


def test_missing_object_is_one_clear_line(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/never-written.kbundle"
    with pytest.raises(StorageError) as error, open_source(url, storage_options=s3_server.options):
        pass
    assert _one_line(error) == f"cannot read {url}: no such object"


def test_refused_connection_is_one_clear_line(s3_server: S3Server, bucket: str):
    import socket

    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"s3://{bucket}/kindling.kbundle"
    options = {**s3_server.options, "endpoint_url": f"http://127.0.0.1:{closed_port}"}
    with pytest.raises(StorageError) as error, open_source(url, storage_options=options):
        pass
    message = _one_line(error)
    assert message.startswith(f"cannot read {url}: Could not connect to the endpoint URL")


def test_errors_from_the_callers_code_pass_through_unchanged(s3_server: S3Server, bucket: str):
    url = f"s3://{bucket}/kindling.kbundle"
    s3_server.fs().pipe(url, b"not a bundle")
    with (
        pytest.raises(ValueError, match="damaged"),
        open_source(url, storage_options=s3_server.options),
    ):
        raise ValueError("damaged")


def test_missing_s3_packages_name_the_extra(tmp_path: Path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["fsspec"] = None  # as if `pip install kindling-bundle` without [s3]
        from kindling_bundle.errors import StorageError
        from kindling_bundle.io.storage import open_destination, open_source
        for opener in (open_source, open_destination):
            try:
                with opener("s3://bucket/kindling.kbundle"):
                    pass
            except StorageError as exc:
                print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("s3://bucket/kindling.kbundle: ")
        assert line.endswith("pip install 'kindling-bundle[s3]'")


def test_other_schemes_name_their_package():
    pytest.importorskip("fsspec")
    if _installed("gcsfs"):
        pytest.skip("gcsfs is installed here")
    with (
        pytest.raises(StorageError, match=r"pip install fsspec gcsfs$"),
        open_source("gs://bucket/kindling.kbundle"),
    ):
        pass
    with (
        pytest.raises(StorageError, match=r"unsupported URL scheme nosuchscheme://"),
        open_source("nosuchscheme://bucket/kindling.kbundle"),
    ):
        pass


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- the same layer for memory://, file:// and plain paths ---------------------------------


def test_memory_url_is_published_only_on_success():
    url = f"memory://backups/{uuid.uuid4().hex}.kbundle"
    with pytest.raises(RuntimeError), open_destination(url) as stream:
        stream.write(b"half a bundle")
        raise RuntimeError("interrupted")
    with pytest.raises(StorageError, match="no such object"), open_source(url):
        pass

    with open_destination(url) as stream:
        stream.write(b"whole bundle")
    with open_source(url) as stream:
        assert stream.read() == b"whole bundle"


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_local_destination_is_replaced_atomically(tmp_path: Path, as_url: bool):
    path = tmp_path / "kindling.kbundle"
    target = path.as_uri() if as_url else str(path)
    path.write_bytes(b"previous backup")

    with pytest.raises(RuntimeError), open_destination(target) as stream:
        stream.write(b"half")
        stream.flush()
        assert path.read_bytes() == b"previous backup"
        if hasattr(os, "O_TMPFILE"):  # unnamed until complete: a kill now would leave nothing
            assert sorted(p.name for p in tmp_path.iterdir()) == ["kindling.kbundle"]
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"previous backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kindling.kbundle"]

    with open_destination(target) as stream:
        stream.write(b"new backup")
    assert path.read_bytes() == b"new backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kindling.kbundle"]
    with open_source(target) as stream:
        assert stream.read() == b"new backup"


def test_local_targets_that_cannot_work_are_one_clear_line(tmp_path: Path):
    missing = tmp_path / "nope.kbundle"
    with pytest.raises(StorageError) as error, open_source(str(missing)):
        pass
    assert _one_line(error) == f"cannot read {missing}: no such file or folder"

    no_folder = tmp_path / "no-folder" / "x.kbundle"
    with pytest.raises(StorageError) as error, open_destination(str(no_folder)):
        pass
    assert _one_line(error) == f"cannot write {no_folder}: folder {no_folder.parent} does not exist"

    with pytest.raises(StorageError) as error, open_destination(str(tmp_path)):
        pass
    assert _one_line(error) == f"cannot write {tmp_path}: it is a folder"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("s3://bucket/key", True),
        ("gs://bucket/key", True),
        ("memory://x", True),
        ("file:///tmp/x.kbundle", True),
        ("-", False),
        ("backup.kbundle", False),
        ("/tmp/backup.kbundle", False),
        ("C:\\backups\\x.kbundle", False),
        ("C://backups/x.kbundle", False),
        ("weird:name.kbundle", False),
    ],
)
def test_is_url(target: str, expected: bool):
    assert is_url(target) is expected


def test_parse_storage_options():
    assert parse_storage_options(
        ["anon=false", "profile=backup", "max_concurrency=4", 'client_kwargs={"region_name": "x"}']
    ) == {
        "anon": False,
        "profile": "backup",
        "max_concurrency": 4,
        "client_kwargs": {"region_name": "x"},
    }
    assert parse_storage_options(["secret=a=b"]) == {"secret": "a=b"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_storage_options(["endpoint"])
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_storage_options(["client_kwargs={oops"])
