"""The output folder: a local path or any fsspec URI (``s3://``, ``gs://`` with s3fs/gcsfs, ``memory://``).

Shards are always written to a local file first (by the worker processes) and then moved (local) or uploaded
(remote) by the main process, so remote credentials and in-process file systems stay in one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from typing import Any

import fsspec


class OutDir:
    """The run's output folder.

    Args:
        uri: local folder or fsspec URI.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") or uri
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.is_local = "file" in _protocols(self.fs)

    def url(self, name: str) -> str:
        """The full path or URI of a file in the folder (what a reader opens)."""
        if self.is_local:
            return os.path.join(self.root, name)
        return self.uri + "/" + name

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def makedirs(self, name: str = "") -> None:
        """Creates the folder (and a subfolder `name`) if missing."""
        self.fs.makedirs(self._path(name) if name else self.root, exist_ok=True)

    def exists(self, name: str) -> bool:
        """Whether a file exists in the folder."""
        return self.fs.exists(self._path(name))

    def size(self, name: str) -> int | None:
        """Size of a file in bytes, or None if it does not exist."""
        try:
            return int(self.fs.size(self._path(name)))
        except FileNotFoundError:
            return None

    def list(self, subdir: str = "") -> list[str]:
        """Names of the files directly in the folder (or in a subfolder), sorted."""
        path = self._path(subdir) if subdir else self.root
        if not self.fs.exists(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))

    def read_bytes(self, name: str) -> bytes:
        """Reads a whole file."""
        return self.fs.cat_file(self._path(name))

    def read_json(self, name: str) -> Any:
        """Reads a JSON file."""
        return json.loads(self.read_bytes(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Writes a file so that readers never see a partial one (temp file + rename where the fs has renames)."""
        if self.is_local:
            final = self._path(name)
            tmp = final + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)  # atomic against a killed process (no fsync: a power loss calls for `verify`)
        else:
            self.fs.pipe_file(self._path(name), data)

    def write_json(self, name: str, obj: Any) -> None:
        """Writes JSON deterministically (sorted keys, fixed indentation)."""
        self.write_bytes(name, (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode())

    def put(self, local_path: str, name: str) -> None:
        """Moves a finished local file into the folder (rename if local, upload then delete if remote)."""
        if self.is_local:
            os.replace(local_path, self._path(name))
        else:
            self.fs.put_file(local_path, self._path(name))
            os.remove(local_path)

    def sha256(self, name: str) -> str:
        """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
        digest = hashlib.sha256()
        with self.fs.open(self._path(name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def remove(self, name: str) -> None:
        """Deletes a file if it exists."""
        path = self._path(name)
        if self.fs.exists(path):
            self.fs.rm_file(path)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def open_file(url: str, mode: str = "rb") -> Any:
    """Opens a local path or fsspec URI (used by `verify` and the manifest reader)."""
    return fsspec.open(url, mode).open()
