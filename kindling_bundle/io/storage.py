"""Where bundles are read from and written to: a local path, `-` (stdin/stdout), or a URL.

This is the one place that turns what a user typed into a binary stream. URLs (`s3://bucket/key`,
`gs://`, `az://`, `memory://`, and any other scheme fsspec knows) go through fsspec; S3 needs the
optional extra `pip install 'kindling-bundle[s3]'` (fsspec + s3fs). `file://` URLs are local paths.

Both directions stream. A read fetches the object in ranged requests of `block_size` bytes and keeps
about one block in memory, never a local copy. A write to S3 is a multipart upload of 8 MiB parts,
held in memory one part at a time, that is completed only when the `with` block exits cleanly: until
then, and for ever if the block raises or the process dies, nothing exists at the destination key.
A write to a local path goes to a temporary file beside it, is fsynced, and is renamed into place
on a clean exit, so a reader sees the old file or the complete new one, never half a bundle.

Credentials and endpoints come from where the storage library looks for them (for S3: the
AWS_* environment variables, the AWS config and credentials files, AWS_PROFILE, and
AWS_ENDPOINT_URL for S3-compatible stores), and from `storage_options`, passed unchanged to the
fsspec filesystem (for S3: `key`, `secret`, `token`, `profile`, `endpoint_url`, `anon`, ...).

Every failure to reach or use the storage is a StorageError: one line naming the path or URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from kindling_bundle.errors import StorageError

STREAM_BLOCK_SIZE = 8 * 2**20
"""Bytes fetched per ranged GET while streaming a whole object (verify, import)."""

HEAD_BLOCK_SIZE = 256 * 2**10
"""Bytes fetched per ranged GET when only the start of an object is needed (inspect)."""

UPLOAD_PART_SIZE = 8 * 2**20
"""Bytes per multipart upload part; S3 needs at least 5 MiB for every part but the last."""

STDIO = "-"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # two letters or more: `C://x` is a Windows path

# The fsspec implementation each well-known scheme needs, for the missing-package message.
_PACKAGES = {
    "s3": "kindling-bundle[s3]",
    "s3a": "kindling-bundle[s3]",
    "gs": "fsspec gcsfs",
    "gcs": "fsspec gcsfs",
    "az": "fsspec adlfs",
    "abfs": "fsspec adlfs",
    "abfss": "fsspec adlfs",
}

# Exceptions raised from inside these libraries are storage failures, whatever their class.
_STORAGE_LIBRARIES = {"fsspec", "s3fs", "botocore", "aiobotocore", "aiohttp", "gcsfs", "adlfs"}


def is_url(target: str) -> bool:
    """True for `scheme://...`; False for `-`, plain paths and Windows drive paths."""
    return bool(_URL.match(target))


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn `key=value` strings (from --storage-option) into fsspec keyword arguments.

    Values `true`/`false` become booleans, whole numbers become ints, and values that start with
    `{` or `[` are read as JSON (for nested options such as `client_kwargs`); the rest stay text.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        options[key.strip()] = _option_value(pair, value)
    return options


def _option_value(pair: str, value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{pair!r}: the value is not valid JSON ({exc.msg})") from exc
    return value


@contextlib.contextmanager
def open_source(
    target: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    block_size: int = STREAM_BLOCK_SIZE,
) -> Iterator[BinaryIO]:
    """Open a bundle for reading: `-` is standard input, a URL streams, anything else is a path.

    `block_size` is how much one ranged request fetches from a URL: STREAM_BLOCK_SIZE to read an
    object through, HEAD_BLOCK_SIZE when only its first bytes matter.
    """
    if target == STDIO:
        yield sys.stdin.buffer
        return
    local = _local_path(target)
    with _translated("read", target, remote=local is None):
        if local is not None:
            stream: BinaryIO = open(local, "rb")  # noqa: SIM115 - closed below, after the yield
        else:
            fs, path = _filesystem(target, storage_options)
            stream = fs.open(path, "rb", block_size=block_size, cache_type="readahead")
            _name(stream, target)
    try:
        with _translated("read", target, remote=local is None, only_storage=True):
            yield stream
    finally:
        with contextlib.suppress(Exception):
            stream.close()


@contextlib.contextmanager
def open_destination(
    target: str, *, storage_options: Mapping[str, Any] | None = None
) -> Iterator[BinaryIO]:
    """Open a bundle for writing; it appears at `target` only when the block exits cleanly.

    `-` is standard output. A local path (or `file://` URL) is written through `atomic_file`
    (a temporary file in the same folder, fsynced and renamed into place). Any other URL is
    uploaded as it is written and published (S3: CompleteMultipartUpload) on a clean exit; if
    the block raises, the upload is aborted and nothing is left at the key.
    """
    if target == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    local = _local_path(target)
    if local is not None:
        with atomic_file(local, label=target) as stream:
            yield stream
    else:
        with _remote_destination(target, storage_options) as stream:
            yield stream


def fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (the folder entry), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_local_destination(path: str | os.PathLike[str], *, label: str | None = None) -> None:
    """Refuse, before any work is done, a local destination that cannot be written: a folder,
    or a path in a folder that does not exist."""
    path = Path(path)
    label = label or os.fspath(path)
    if path.is_dir():
        raise StorageError(f"cannot write {label}: it is a folder")
    if not path.parent.is_dir():
        raise StorageError(f"cannot write {label}: folder {path.parent} does not exist")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, label: str | None = None) -> Iterator[BinaryIO]:
    """A new file that appears at `path` only when the block exits cleanly, complete and fsynced.

    The file is written beside `path` (same file system, so the rename is atomic) and renamed over
    it: a reader sees the old file or the complete new one, and on any failure `path` is left as
    it was. On Linux the file has no name until then (O_TMPFILE), so a process killed mid-write
    (SIGKILL, power loss) leaves nothing behind at all. Elsewhere (or on a file system without
    O_TMPFILE) it is `.NAME.XXXXXXXX.tmp`, removed on any error the process lives to see; after
    a kill it stays, clearly named, for the user to delete (nothing else deletes it: it could
    belong to a write still running). The folder is fsynced after the rename, so the new name
    is durable. Every OSError (a missing folder, a full disk, permissions) is a one-line
    StorageError naming `label` (default: the path).
    """
    path = Path(path)
    label = label or os.fspath(path)
    check_local_destination(path, label=label)
    temporary: str | None = None
    with _translated("write", label, remote=False):
        unnamed = _unnamed_file(path.parent)
        if unnamed is None:
            fd, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
            )
        out = os.fdopen(fd if unnamed is None else unnamed, "wb")
    try:
        with _translated("write", label, remote=False, only_storage=True):
            yield out
        with _translated("write", label, remote=False):
            out.flush()
            os.fsync(out.fileno())
            if temporary is None:
                _publish(out.fileno(), path)
            out.close()
            if temporary is not None:
                os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()  # may flush into a full disk again: what failed first is what counts
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise
    fsync_folder(path.parent)


def _unnamed_file(folder: Path, *, readable: bool = False) -> int | None:
    """A new file in `folder` that has no name (Linux O_TMPFILE, mode 0600), or None where the
    system or the file system has no such thing."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, flag | (os.O_RDWR if readable else os.O_WRONLY), 0o600)
    except OSError:  # e.g. EOPNOTSUPP: this file system cannot; a named one will do
        return None


def _publish(fd: int, path: Path) -> None:
    """Give the unnamed file `fd` the name `path`, replacing any file there in one step: link
    it under a fresh temporary name, then rename that over `path`."""
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        while True:
            temporary = f".{path.name}.{secrets.token_hex(4)}.tmp"
            try:  # dst_dir_fd makes os.link call linkat(), which can follow /proc's link
                os.link(f"/proc/self/fd/{fd}", temporary, dst_dir_fd=folder)
                break
            except FileExistsError:
                continue
        try:
            os.replace(temporary, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)


@contextlib.contextmanager
def _remote_destination(
    target: str, storage_options: Mapping[str, Any] | None
) -> Iterator[BinaryIO]:
    # An fsspec transaction opens files with autocommit off: S3File then always uses a multipart
    # upload and completes it only in commit(); discard() aborts it. memory:// honours only the
    # transaction. The filesystem is a private instance, so the transaction is ours alone.
    with _translated("write", target):
        fs, path = _filesystem(target, storage_options, private=True)
        fs.start_transaction()
        stream = fs.open(path, "wb", block_size=UPLOAD_PART_SIZE)
        _name(stream, target)
    try:
        with _translated("write", target, only_storage=True):
            yield stream
        with _translated("write", target):
            stream.close()  # uploads the last part; nothing is visible yet
            fs.end_transaction()  # completes the upload: the object appears at its key now
    except BaseException:
        _abandon(fs, stream)
        raise


def _abandon(fs: Any, stream: Any) -> None:
    """Abort an unfinished upload without ever publishing it, keeping the caller's exception."""
    from fsspec.spec import AbstractBufferedFile

    # close() would upload the buffered tail, and a garbage-collected unclosed buffered file
    # closes itself (S3File: flush after discard() fails noisily); marked closed, neither happens.
    if isinstance(stream, AbstractBufferedFile):
        stream.closed = True
    with contextlib.suppress(Exception):  # the original error matters more than a failed abort
        fs.transaction.complete(commit=False)


def _name(stream: Any, target: str) -> None:
    """Give a remote stream the `name` a file has, so that messages about it name the URL."""
    with contextlib.suppress(AttributeError):
        stream.name = target


def _local_path(target: str) -> Path | None:
    """The local path a target names (a plain path or a `file://` URL), or None for a URL."""
    if not is_url(target):
        return Path(target).expanduser()
    parts = urlsplit(target)
    if parts.scheme.lower() == "file" and parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    return None


def _filesystem(
    url: str, storage_options: Mapping[str, Any] | None, *, private: bool = False
) -> tuple[Any, str]:
    """The fsspec filesystem and path within it for a URL, or a StorageError naming the extra."""
    scheme = url.split("://", 1)[0].lower()
    try:
        import fsspec.core
    except ImportError as exc:
        raise StorageError(
            f"{url}: {scheme}:// URLs need the optional storage packages: "
            f"pip install {_install_hint(scheme)}"
        ) from exc
    options = dict(storage_options or {})
    if private:
        options["skip_instance_cache"] = True
    try:
        found: tuple[Any, str] = fsspec.core.url_to_fs(url, **options)
        return found
    except ImportError as exc:
        raise StorageError(
            f"{url}: {scheme}:// URLs need a package that is not installed: "
            f"pip install {_install_hint(scheme)}"
        ) from exc
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise StorageError(f"{url}: unsupported URL scheme {scheme}://") from exc
        raise StorageError(f"{url}: {_first_line(str(exc))}") from exc
    except TypeError as exc:  # an option the filesystem does not take
        raise StorageError(f"{url}: bad storage option: {_first_line(str(exc))}") from exc


def _install_hint(scheme: str) -> str:
    hint = _PACKAGES.get(scheme)
    if hint is None:
        return f"fsspec and the fsspec package for {scheme}://"
    return f"'{hint}'" if "[" in hint else hint


@contextlib.contextmanager
def _translated(
    action: str, target: str, *, remote: bool = True, only_storage: bool = False
) -> Iterator[None]:
    """Turn storage failures into one StorageError line naming the target.

    With `only_storage`, used around the caller's own code, only OSErrors and exceptions from the
    storage libraries are translated; anything else (a damaged bundle, a bug) passes through.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if only_storage and not _is_storage_failure(exc):
            raise
        raise StorageError(f"cannot {action} {target}: {_reason(exc, remote)}") from exc


def _is_storage_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    return type(exc).__module__.split(".", 1)[0] in _STORAGE_LIBRARIES


def _reason(exc: BaseException, remote: bool) -> str:
    message = _first_line(getattr(exc, "strerror", None) or str(exc)) or type(exc).__name__
    if isinstance(exc, PermissionError):
        if remote:
            return (
                f"access denied ({message}); check the credentials (environment, AWS config "
                "files, --storage-option) and the bucket's permissions"
            )
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        if remote and "does not exist" in message:
            return message.rstrip(".").lower()  # "the specified bucket does not exist"
        return "no such object" if remote else "no such file or folder"
    if isinstance(exc, TypeError):  # the client was given an option it does not take
        return f"bad storage option ({message})"
    if type(exc).__name__ == "NoCredentialsError":
        return (
            "no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE, or pass --storage-option key=... --storage-option secret=..."
        )
    return message


def _first_line(text: str) -> str:
    return " ".join(text.split())
