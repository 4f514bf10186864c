"""Atomic writes: every file and folder the project writes is complete or absent, never seen half-written.

A file is written to a temporary sibling and renamed onto its path (:func:`atomic_path`, :func:`write_text`,
:func:`write_json`); a folder is built in a temporary sibling (:func:`staging_dir`) and renamed onto its path
(:func:`publish_dir`), an existing one moved aside first and deleted after the swap. Renames within one folder
are atomic on POSIX file systems, so a reader sees the old content or the new, and a crash leaves at most a
dot-named temporary sibling behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` when the block succeeds and is
    removed when it fails. ``suffix`` keeps a file type for writers that infer the format from the name."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; return the path."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def staging_dir(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; when the block succeeds it is published as
    ``destination`` (:func:`publish_dir`), when it fails it is removed and ``destination`` is left as it was."""
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a published folder is ordinary shared output
        yield staging
        publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(staging: Path, destination: Path) -> None:
    """Rename the finished folder ``staging`` onto ``destination`` (same file system), replacing an existing one."""
    if not destination.exists():
        staging.replace(destination)
        return
    aside = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.old-"))
    destination.replace(aside / destination.name)
    try:
        staging.replace(destination)
    except BaseException:
        (aside / destination.name).replace(destination)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    # A hard link costs no space; it fails across file systems (e.g. a checkpoint downloaded to /tmp).
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def copy_dir(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Publish a copy of the folder ``source`` as ``destination`` (files hard-linked where the file system allows:
    the files of a published folder are never modified in place, so sharing them is safe)."""
    with staging_dir(destination) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=_link_or_copy)
    return Path(destination)


def copy_file(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Copy the file ``source`` to ``destination`` atomically."""
    with atomic_path(destination) as tmp:
        shutil.copy2(source, tmp)
    return Path(destination)
