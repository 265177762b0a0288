"""The failure store: a directory database of the distinct failures campaigns found.

Laid out like Hypothesis's ``DirectoryBasedExampleDatabase``: one directory per key (here a
failure signature, named by its hash) holding one file per value (the failure's JSON record,
named by the hash of its content). A file is written under a temporary name in the same
directory and renamed into place, so a crash mid-write leaves either no entry or a whole one,
never half of one; a better record replaces a worse one by writing the new file before deleting
the old. A failure's *id* is its signature's hash: it stays the same when a smaller reproducer
replaces the stored one, and when the failure is marked fixed.

As with Hypothesis's ``ReadOnlyDatabase`` and ``MultiplexedDatabase``, a store can be opened read
only (a CI store shared with developers) and several stores read as one; a campaign writes only
to its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._units import FoundFailure, Unit, UnitError, unit_from_json

__all__ = ["FailureStore", "StoreError", "StoredFailure", "failure_id", "find"]

RECORD_VERSION = 1
_ID_LENGTH = 16


class StoreError(Exception):
    """A store that cannot be used (not a directory, not writable) or an id that names no
    stored failure, or more than one."""


def _hash(data: bytes) -> str:
    return hashlib.sha384(data).hexdigest()[:_ID_LENGTH]


def failure_id(signature: str) -> str:
    """The id of the failure with *signature* in every store (its directory's name)."""
    return _hash(signature.encode())


@dataclass(frozen=True)
class StoredFailure:
    """A failure as a store keeps it."""

    id: str
    signature: str
    title: str
    detail: str
    size: tuple[int, ...]
    reproducer: Unit
    fixed: bool  # a later campaign's rerun no longer failed with this signature
    store: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "signature": self.signature,
            "title": self.title,
            "detail": self.detail,
            "size": list(self.size),
            "reproducer": self.reproducer.to_json(),
            "fixed": self.fixed,
        }

    @classmethod
    def from_failure(cls, failure: FoundFailure, store: Path) -> StoredFailure:
        return cls(
            id=failure_id(failure.signature),
            signature=failure.signature,
            title=failure.title,
            detail=failure.detail,
            size=failure.size,
            reproducer=failure.reproducer,
            fixed=False,
            store=store,
        )


def _parse(data: bytes, key: str, store: Path) -> StoredFailure:
    """The record in *data*; ``ValueError`` saying what is wrong with it."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != RECORD_VERSION:
        raise ValueError(f"not a version {RECORD_VERSION} failure record")
    signature = document.get("signature")
    if not isinstance(signature, str) or failure_id(signature) != key:
        raise ValueError("its signature does not belong under this id")
    size = document.get("size")
    if not (isinstance(size, list) and all(isinstance(n, int) for n in size)):
        raise ValueError("no size")
    try:
        reproducer = unit_from_json(document.get("reproducer"))
    except UnitError as error:
        raise ValueError(str(error)) from None
    return StoredFailure(
        id=key,
        signature=signature,
        title=str(document.get("title", "")),
        detail=str(document.get("detail", "")),
        size=tuple(size),
        reproducer=reproducer,
        fixed=bool(document.get("fixed", False)),
        store=store,
    )


class FailureStore:
    """One store directory. *read_only*: never written (``save`` and ``mark_fixed`` do
    nothing), like Hypothesis's ``ReadOnlyDatabase`` over a shared CI store.

    Entries that cannot be read (corrupted, truncated, from another version) are skipped and
    reported through :attr:`problems`, one line each; they are left where they are, never
    deleted: nothing stored is lost."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.problems: list[str] = []

    def __repr__(self) -> str:
        return f"FailureStore({str(self.path)!r}, read_only={self.read_only})"

    def check(self) -> None:
        """Refuse, before a campaign starts, a store it could not use: :class:`StoreError`."""
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StoreError(f"store {self.path}: under {existing}, which is not a directory")
        if self.read_only:
            if not self.path.is_dir():
                raise StoreError(f"store {self.path}: no such directory")
            return
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StoreError(f"store {self.path}: {existing} is not writable")

    def _records(self, key: str) -> Iterator[tuple[Path, StoredFailure]]:
        directory = self.path / key
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            if name.startswith("."):
                continue  # a write in progress (or one a crash interrupted)
            path = directory / name
            try:
                yield path, _parse(path.read_bytes(), key, self.path)
            except (OSError, ValueError) as error:
                problem = f"store {self.path}: skipped corrupted entry {key}/{name} ({error})"
                if problem not in self.problems:
                    self.problems.append(problem)

    def fetch(self, key: str) -> StoredFailure | None:
        """The failure stored under id *key* (the smallest, if a crash left two), or None."""
        records = [record for _, record in self._records(key)]
        return min(records, key=lambda record: record.size) if records else None

    def __iter__(self) -> Iterator[StoredFailure]:
        try:
            keys = sorted(os.listdir(self.path))
        except OSError:
            return
        for key in keys:
            if key.startswith(".") or not (self.path / key).is_dir():
                continue
            record = self.fetch(key)
            if record is not None:
                yield record

    def ids(self, prefix: str) -> list[str]:
        try:
            return sorted(key for key in os.listdir(self.path) if key.startswith(prefix))
        except OSError:
            return []

    def save(self, failure: StoredFailure) -> bool:
        """Keep *failure* if its signature is new here, or it is smaller than the stored one
        (or the stored one was marked fixed and it fails again); whether it was written."""
        if self.read_only:
            return False
        stored = self.fetch(failure.id)
        if stored is not None and not stored.fixed and stored.size <= failure.size:
            return False
        self._replace(failure)
        return True

    def mark_fixed(self, failure: StoredFailure) -> None:
        if self.read_only:
            return
        self._replace(replace(failure, fixed=True, store=self.path))

    def _replace(self, failure: StoredFailure) -> None:
        directory = self.path / failure.id
        data = json.dumps(failure.to_json(), indent=2, sort_keys=True).encode()
        target = directory / f"{_hash(data)}.json"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                # write then rename, in the same directory (a rename across file systems is
                # not atomic): a crash leaves a dot-file that readers skip, or the whole entry
                descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
                try:
                    with os.fdopen(descriptor, "wb") as file:
                        file.write(data)
                        file.flush()
                        os.fsync(file.fileno())
                    os.replace(temporary, target)
                except BaseException:
                    Path(temporary).unlink(missing_ok=True)
                    raise
            # the new record is in place: only now the records it replaces go
            for path, _ in list(self._records(failure.id)):
                if path != target:
                    path.unlink(missing_ok=True)
        except OSError as error:
            raise StoreError(f"store {self.path}: cannot write ({error.strerror})") from None


def find(stores: Sequence[FailureStore], prefix: str) -> StoredFailure:
    """The stored failure whose id starts with *prefix*, in the first store that has it."""
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise StoreError(f"{prefix!r} is not a failure id (hex digits, as `list` shows them)")
    ids = sorted({key for store in stores for key in store.ids(prefix)})
    if not ids:
        where = ", ".join(str(store.path) for store in stores)
        raise StoreError(f"no stored failure {prefix} in {where}")
    if len(ids) > 1:
        raise StoreError(f"failure id {prefix} is ambiguous: {', '.join(ids)}")
    for store in stores:
        record = store.fetch(ids[0])
        if record is not None:
            return record
    problems = [problem for store in stores for problem in store.problems]
    raise StoreError(problems[0] if problems else f"no readable stored failure {ids[0]}")
