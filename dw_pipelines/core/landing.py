"""Where source files may be read from.

Roots are local directories or `s3://bucket/prefix` locations in S3-compatible object storage.
A command's `source_uri` must name a readable file inside one of them:

* a local path (or `file://` URI) must resolve, after following symlinks and `..`, to a regular
  file inside a local root;
* an `s3://bucket/key` URI must name its key in normal form (no `..`, `.` or empty segments:
  S3 keys are literal, see `core.objectstore`) inside a root's bucket and prefix, and the object
  must answer a HEAD request (it exists and the worker may read it).

The check runs at enqueue time and again when the run reads the file, because the file system or
the bucket may have changed in between.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from dw_pipelines.core.errors import CommandError, SourceError
from dw_pipelines.core.objectstore import (
    ObjectPrefix,
    ObjectSource,
    ObjectStore,
    S3Options,
    is_object_uri,
    parse_location,
    parse_root,
)

# What `resolve` hands the readers: a local file's real path, or a confined object.
Source = Path | ObjectSource


class LandingZone:
    """The landing roots.

    Args:
        roots: local directories and `s3://bucket[/prefix]` locations.
        s3: how to reach the object store (endpoint, region, timeouts); used only when a root
            is in object storage. Credentials come from the AWS SDK's default chain.
    """

    def __init__(self, roots: Sequence[str | os.PathLike[str]], s3: S3Options | None = None):
        local: list[Path] = []
        remote: list[ObjectPrefix] = []
        for root in roots:
            text = os.fspath(root)
            if is_object_uri(text):
                remote.append(parse_root(text))
            elif "://" in text:
                raise SourceError(
                    f"DW_LANDING_ROOT entry '{text}': only local directories and "
                    "s3://bucket/prefix roots are supported"
                )
            else:
                local.append(Path(text).expanduser().resolve())
        self.roots: tuple[Path, ...] = tuple(local)
        self.object_roots: tuple[ObjectPrefix, ...] = tuple(remote)
        self.object_store = ObjectStore(s3) if remote else None

    def describe_roots(self) -> str:
        names = [str(r) for r in self.roots] + [r.uri for r in self.object_roots]
        return ", ".join(names) or "(none configured)"

    def resolve(self, source_uri: str) -> Source:
        """The real path or the object `source_uri` names, or `SourceError` saying why not.

        Raises:
            SourceError: refused (permanent): outside the roots, missing, not readable.
            SourceUnavailable: the object store did not answer (transient: retry later).
        """
        if is_object_uri(source_uri):
            return self._resolve_object(source_uri)
        path = _local_path(source_uri)
        real = Path(os.path.realpath(path))
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise SourceError(
                f"source_uri '{source_uri}': resolves to {real}, outside the landing roots: "
                f"{self.describe_roots()}"
            )
        if not real.exists():
            raise SourceError(f"source_uri '{source_uri}': file {real} does not exist")
        if not real.is_file():
            raise SourceError(f"source_uri '{source_uri}': {real} is not a regular file")
        if not os.access(real, os.R_OK):
            raise SourceError(f"source_uri '{source_uri}': {real} is not readable")
        return real

    def _resolve_object(self, source_uri: str) -> ObjectSource:
        location = parse_location(source_uri)
        if not any(root.contains(location) for root in self.object_roots):
            raise SourceError(
                f"source_uri '{source_uri}': {location.describe()} is outside the landing "
                f"roots: {self.describe_roots()}"
            )
        assert self.object_store is not None  # object roots exist, so the store does
        try:
            info = self.object_store.stat(location)
        except SourceError as exc:
            reason = str(exc).removeprefix(f"{location.uri}: ")
            raise SourceError(f"source_uri '{source_uri}': {reason}") from None
        return ObjectSource(location, info, self.object_store)

    def check_command_source(self, source_uri: str) -> Source:
        """`resolve`, reported as a refusal of the command's `source_uri` field.

        A store that does not answer is not a refusal: `SourceUnavailable` passes through, so
        the caller can try again.
        """
        try:
            return self.resolve(source_uri)
        except SourceError as exc:
            reason = str(exc).removeprefix(f"source_uri '{source_uri}': ")
            raise CommandError("source_uri", reason) from None


def _local_path(source_uri: str) -> Path:
    if source_uri.startswith("file://"):
        parsed = urlparse(source_uri)
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"source_uri '{source_uri}': file URIs must not name a host")
        return Path(unquote(parsed.path))
    if "://" in source_uri:
        scheme = source_uri.split("://", 1)[0]
        raise SourceError(
            f"source_uri '{source_uri}': scheme '{scheme}' is not supported "
            "(local paths, file:// and s3:// URIs only)"
        )
    return Path(source_uri).expanduser()
