"""Local views of run and experiment folders that may live in object storage (s3://, gs://).

Reports, comparisons and resizer grids read many small files and write a few. For a folder in object
storage, `local_copy` downloads the small files into a temporary folder, the report runs there as on a
local folder, and what it wrote is uploaded back beside the run on exit. ZeRO shards are never
downloaded; a checkpoint's consolidated weights only when asked for (`LocalCopy.fetch`).

An S3-compatible server other than AWS (MinIO, Ceph, a test server) is reached by setting
`AWS_ENDPOINT_URL`, which s3fs and pyarrow (Ray's storage) both honour.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.layout import DEEPSPEED_TAG, UNIVERSAL_TAG, WEIGHTS_FILE, is_uri


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and path of a local path or a URI. Object stores are listed afresh every time
    (no listing cache): Ray Train adds and prunes checkpoints under a long-lived driver's feet."""
    import fsspec

    return fsspec.core.url_to_fs(url, **({"use_listings_cache": False} if is_uri(url) else {}))


# Packages whose exceptions are an object store's client errors (an unreachable endpoint, missing or refused
# credentials) that are not already OSErrors.
STORE_CLIENTS = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google")


@contextmanager
def store_errors(what: str, error: type[Exception] = ConnectionError) -> Iterator[None]:
    """Turns an object store's client errors inside the block into one `error` naming `what` and the fix;
    OSErrors (a missing file) and every other exception pass unchanged."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        if type(err).__module__.split(".")[0] not in STORE_CLIENTS:
            raise
        raise error(
            f"{what}: the object store could not be reached or refused the request ({type(err).__name__}: {err}); "
            "check the bucket's name, the credentials and, for a store other than AWS, AWS_ENDPOINT_URL"
        ) from err


def small_files(relative: str) -> bool:
    """What a report reads: everything but ZeRO shards and consolidated weights."""
    parts = relative.split("/")
    return not ({DEEPSPEED_TAG, UNIVERSAL_TAG} & set(parts[:-1])) and parts[-1] != WEIGHTS_FILE


@dataclass
class LocalCopy:
    """A local folder standing for `source`: the folder itself, or a temporary copy of a URI's files.

    Attributes:
        source: the folder as the user named it (local path or URI).
        path: the local folder to read and write.
    """

    source: str
    path: Path
    _fs: Any = None
    _root: str = ""
    _before: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The folder's own name (the experiment's or run's name), not the temporary copy's."""
        return posixpath.basename(self.source.rstrip("/")) if self.remote else self.path.name

    @property
    def remote(self) -> bool:
        return self._fs is not None

    def fetch(self, relative: str | Path) -> Path:
        """The local path of `<source>/<relative>`, downloaded first if the copy skipped it."""
        local = self.path / relative
        if self.remote and not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            self._fs.get_file(posixpath.join(self._root, Path(relative).as_posix()), str(local))
            self._before[Path(relative).as_posix()] = _stamp(local)
        return local

    def where(self, local: Path) -> str:
        """Where a file of the copy lives (or will, once uploaded): a URI for a remote source."""
        if not self.remote:
            return str(local)
        return f"{self.source.rstrip('/')}/{local.relative_to(self.path).as_posix()}"

    def _upload_changes(self) -> None:
        for local in sorted(p for p in self.path.rglob("*") if p.is_file()):
            relative = local.relative_to(self.path).as_posix()
            if self._before.get(relative) != _stamp(local):
                self._fs.put_file(str(local), posixpath.join(self._root, relative))


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@contextmanager
def local_copy(source: str | Path, *, include: Callable[[str], bool] = small_files) -> Iterator[LocalCopy]:
    """A local folder for `source`. A local `source` is used in place. A URI's files for which `include`
    (given the path relative to `source`, with "/") is true are downloaded into a temporary folder; on a
    normal exit every file added or changed there is uploaded back, then the copy is deleted.

    Raises:
        FileNotFoundError: `source` does not exist.
    """
    source = str(source)
    if not is_uri(source):
        path = Path(source.removeprefix("file://"))
        if not path.is_dir():
            raise FileNotFoundError(f"{source}: no such folder")
        yield LocalCopy(source, path)
        return
    fs, root = filesystem(source)
    root = root.rstrip("/")
    with store_errors(source):
        if not fs.isdir(root):
            raise FileNotFoundError(f"{source}: no such folder (or it is empty)")
        listing = fs.find(root)
    tmp = Path(tempfile.mkdtemp(prefix="learned-resizer-copy-"))
    try:
        copy = LocalCopy(source, tmp, fs, root)
        for remote in listing:
            relative = posixpath.relpath(remote, root)
            if include(relative):
                try:
                    copy.fetch(relative)
                except FileNotFoundError:  # pruned since the listing (Ray keeps only some checkpoints)
                    continue
        yield copy
        copy._upload_changes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

