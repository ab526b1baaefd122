"""Where source files may be read from.

A command's `source_uri` must resolve, after following symlinks and `..`, to a regular file inside
one of the configured landing roots. The check runs at enqueue time and again when the run reads
the file, because the file system may have changed in between.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from dw_pipelines.core.errors import CommandError, SourceError


class LandingZone:
    def __init__(self, roots: Sequence[str | os.PathLike[str]]):
        local = []
        for root in roots:
            text = os.fspath(root)
            if "://" in text:
                raise SourceError(
                    f"DW_LANDING_ROOT entry '{text}': only local directories are supported "
                    "in this version"
                )
            local.append(Path(text).expanduser().resolve())
        self.roots: tuple[Path, ...] = tuple(local)

    def resolve(self, source_uri: str) -> Path:
        """Return the real path of `source_uri`, or raise `SourceError` saying why it is refused."""
        path = _local_path(source_uri)
        real = Path(os.path.realpath(path))
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(r) for r in self.roots) or "(none configured)"
            raise SourceError(
                f"source_uri '{source_uri}': resolves to {real}, outside the landing roots: {roots}"
            )
        if not real.exists():
            raise SourceError(f"source_uri '{source_uri}': file {real} does not exist")
        if not real.is_file():
            raise SourceError(f"source_uri '{source_uri}': {real} is not a regular file")
        if not os.access(real, os.R_OK):
            raise SourceError(f"source_uri '{source_uri}': {real} is not readable")
        return real

    def check_command_source(self, source_uri: str) -> Path:
        """`resolve`, reported as a refusal of the command's `source_uri` field."""
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
            "(local paths and file:// URIs only)"
        )
    return Path(source_uri).expanduser()
