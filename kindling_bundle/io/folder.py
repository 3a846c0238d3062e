"""A folder of files on a local disk or under a URL prefix (`s3://bucket/prefix/`, any fsspec
URL): what an archive of bundles is kept in (ops.archive).

Files appear whole or not at all. A new local file is written in the folder without a name
(Linux O_TMPFILE; elsewhere as `.kbundle-XXXXXXXX.tmp`), fsynced, and then linked under its
final name, which is only known once it is complete (an archive names a bundle by its SHA-256);
a file already there is never replaced. A process killed before that leaves nothing behind
(elsewhere than Linux, the temporary file). A new remote file is written to a local temporary
file first (unnamed as well), then uploaded whole (io.storage: a multipart upload completed
only at the end), so an interrupted upload leaves nothing under the prefix. Reading streams
(io.storage.open_source). Failures are StorageErrors naming the folder or file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kindling_bundle.io.storage import (
    HEAD_BLOCK_SIZE,
    STREAM_BLOCK_SIZE,
    _filesystem,
    _local_path,
    _translated,
    _unnamed_file,
    fsync_folder,
    open_destination,
    open_source,
)

_COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class FileInfo:
    """A file directly in the folder: its name and size in bytes."""

    name: str
    size: int


class NewFile:
    """A file being written (`stream`); `publish(name)` makes it appear in the folder."""

    def __init__(self, folder: Folder, stream: BinaryIO, path: Path | None):
        self._folder = folder
        self.stream = stream
        self._path = path
        self.published: str | None = None

    @property
    def path(self) -> Path:
        """A path to what was written (for an unnamed file, through /proc)."""
        return self._path or Path(f"/proc/self/fd/{self.stream.fileno()}")

    def publish(self, name: str) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self._folder._publish(self, name)
        self.published = name


class Folder:
    """A local folder or a URL prefix. `url` is as the user gave it (messages name it)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.local = _local_path(url)
        self._fs: Any = None
        self._root = ""
        if self.local is None:
            fs, root = _filesystem(url, self.storage_options, private=True)
            self._fs, self._root = fs, root.rstrip("/")

    def join(self, name: str) -> str:
        """The path or URL of a file in the folder."""
        if self.local is not None:
            return str(self.local / name)
        return f"{self.url.rstrip('/')}/{name}"

    def list(self) -> list[FileInfo]:
        """The files directly in the folder (none if it does not exist yet)."""
        if self.local is not None:
            if not self.local.exists():
                return []
            with _translated("list", self.url, remote=False):
                return [
                    FileInfo(entry.name, entry.stat().st_size)
                    for entry in os.scandir(self.local)
                    if entry.is_file()
                ]
        with _translated("list", self.url):
            try:
                entries = self._fs.ls(self._root, detail=True, refresh=True)
            except FileNotFoundError:
                return []
        return [
            FileInfo(str(entry["name"]).rstrip("/").rsplit("/", 1)[-1], int(entry.get("size", 0)))
            for entry in entries
            if entry.get("type") == "file"
        ]

    @contextlib.contextmanager
    def open(self, name: str, *, head: bool = False) -> Iterator[BinaryIO]:
        """Read a file of the folder (streamed from a URL; with `head`, in small ranges, for
        reading only its start)."""
        block_size = HEAD_BLOCK_SIZE if head else STREAM_BLOCK_SIZE
        with open_source(
            self.join(name), storage_options=self.storage_options, block_size=block_size
        ) as stream:
            yield stream

    @contextlib.contextmanager
    def new_file(self) -> Iterator[NewFile]:
        """A file to write; it appears only if `publish` is called before the block ends."""
        path: Path | None = None
        if self.local is not None:
            with _translated("write", self.url, remote=False):
                self.local.mkdir(parents=True, exist_ok=True)
                fd = _unnamed_file(self.local, readable=True)
                if fd is None:
                    fd, temporary = tempfile.mkstemp(
                        dir=self.local, prefix=".kbundle-", suffix=".tmp"
                    )
                    path = Path(temporary)
        else:
            fd = _unnamed_file(Path(tempfile.gettempdir()), readable=True)
            if fd is None:
                fd, temporary = tempfile.mkstemp(prefix=".kbundle-", suffix=".tmp")
                path = Path(temporary)
        try:
            with os.fdopen(fd, "w+b") as stream:
                yield NewFile(self, stream, path)
        finally:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _publish(self, new: NewFile, name: str) -> None:
        target = self.join(name)
        if self.local is not None:
            with _translated("write", target, remote=False):
                folder = os.open(self.local, os.O_RDONLY)
                try:  # never replaces: fails if the name exists (dst_dir_fd: linkat(), which
                    # can follow /proc's link to an unnamed file)
                    os.link(new.path, name, dst_dir_fd=folder)
                finally:
                    os.close(folder)
            fsync_folder(self.local)
            return
        new.stream.seek(0)
        with open_destination(target, storage_options=self.storage_options) as out:
            shutil.copyfileobj(new.stream, out, _COPY_BYTES)

    def delete(self, name: str) -> None:
        target = self.join(name)
        if self.local is not None:
            with _translated("delete", target, remote=False):
                (self.local / name).unlink()
            return
        with _translated("delete", target):
            self._fs.rm_file(f"{self._root}/{name}")
