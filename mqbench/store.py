"""The record store: append-only JSON records, one file per finished cell, written atomically.

Layout: ``<results>/records/<created>-<config hash>-<record id>.json``. A record is first written to
a hidden ``.*.partial`` temp file in the same directory, fsynced, then hard-linked to its final name
(which fails rather than overwrite an existing file) and the temp file removed: a killed run leaves
at most a hidden temp file, which is never read as a record. Files that are not valid records
(corrupt JSON, foreign files, a newer schema, a record written by a newer mqbench) are reported by name and
skipped, never modified.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqbench import __version__, record_schema
from mqbench.errors import ResultsDirError
from mqbench.fsutil import atomic_write
from mqbench.record_migrations import migrate

SCHEMA = "mqbench.record"
# A record dict may carry large per-cell data under this key (name -> JSON-serialisable object): ``append``
# writes each to ``<results>/attachments/`` first and the record references it by path and sha256.
ATTACHMENTS_KEY = "_attachments"
SCHEMA_VERSION = 1


class InvalidRecordError(ValueError):
    """``Store.append`` refused a record that breaks the record schema; ``problem`` says how."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"refusing to store an invalid record: {problem}")
        self.problem = problem


@dataclass
class LoadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def validate(data: Any) -> str | None:
    """None if ``data`` is a record this mqbench can read, otherwise why not: not a record, a newer schema or
    mqbench, or a field that breaks :data:`mqbench.record_schema.RECORD_SCHEMA` (named by its path)."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return "not an mqbench record (no \"schema\": \"mqbench.record\")"
    version = data.get("schema_version")
    if not isinstance(version, int):
        return "record without an integer schema_version"
    if version > SCHEMA_VERSION:
        return f"written by a newer mqbench (schema {version} > {SCHEMA_VERSION}); upgrade mqbench to read it"
    written_by = (data.get("provenance") or {}).get("mqbench") if isinstance(data.get("provenance"), dict) else None
    if isinstance(written_by, str) and release(written_by) > release(__version__):
        return f"written by a newer mqbench ({written_by} > {__version__}); upgrade mqbench to read it"
    return record_schema.problem(data)


def release(version: str) -> tuple[int, int, int]:
    """The release numbers of a version string (``"0.2.1rc1+g3f"`` -> ``(0, 2, 1)``; missing parts are 0)."""
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if m is None:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))


class Store:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

    def ensure_writable(self) -> None:
        """Create the records directory and prove it is writable, or raise ResultsDirError."""
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.records_dir, prefix=".write-check-", suffix=".partial"):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ResultsDirError(f"results directory {self.root} is not writable ({reason}); "
                                  "choose another with --results") from None

    def append(self, record: dict[str, Any]) -> Path:
        """Write ``record`` atomically as a new file; never replaces an existing file. Its attachments
        (:data:`ATTACHMENTS_KEY`) are written first, each atomically, so a stored record's references resolve."""
        problem = validate(record)
        if problem:
            raise InvalidRecordError(problem)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        stamp = record["created"].replace(":", "").replace("-", "").split(".")[0]
        name = f"{stamp}-{record['config_hash'][:12]}-{record['record_id'][:8]}.json"
        final = self.records_dir / name
        attachments = record.pop(ATTACHMENTS_KEY, None) or {}
        written: list[Path] = []
        try:
            for key, payload in sorted(attachments.items()):
                blob = json.dumps(payload, indent=None, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
                path = self.root / "attachments" / f"{final.stem}.{key}.json"
                atomic_write(path, blob + b"\n", overwrite=False)
                written.append(path)
                record.setdefault("attachments", {})[key] = {
                    "path": path.relative_to(self.root).as_posix(), "sha256": hashlib.sha256(blob + b"\n").hexdigest(),
                    "bytes": len(blob) + 1}
            data = json.dumps(record, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"
            atomic_write(final, data, overwrite=False)  # raises FileExistsError instead of overwriting
        except BaseException:  # the record was not stored: its attachments would be orphans
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return final

    def load(self) -> LoadResult:
        """Every readable record (sorted by creation time) and the files that are not records."""
        out = LoadResult()
        if not self.records_dir.is_dir():
            return out
        for path in sorted(self.records_dir.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                out.problems.append((path, f"not valid JSON ({type(exc).__name__}: {str(exc)[:80]})"))
                continue
            problem = validate(data)
            if problem:
                out.problems.append((path, problem))
                continue
            data = migrate(data)  # a first-wave record read in today's shape (the file is unchanged)
            data["_path"] = str(path)
            out.records.append(data)
        out.records.sort(key=lambda r: (r["created"], r["record_id"]))
        return out

    def completed_hashes(self) -> set[str]:
        """Config hashes with a stored ``ok`` or ``skipped`` record (failed cells are retried)."""
        return set(self.completed())

    def completed(self) -> dict[str, dict[str, Any]]:
        """The newest ``ok`` or ``skipped`` record of each config hash that has one."""
        return {r["config_hash"]: r for r in self.load().records if r["status"] in ("ok", "skipped")}

    def attachment(self, record: dict[str, Any], key: str) -> Any:
        """The attachment ``key`` of a loaded ``record``, verified against the sha256 the record holds;
        ResultsDirError naming the file when it is missing, altered or not JSON."""
        ref = (record.get("attachments") or {}).get(key)
        if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
            raise ResultsDirError(f"record {record.get('record_id', '?')} has no {key!r} attachment")
        path = self.root / ref["path"]
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ResultsDirError(f"attachment {path} of record {record.get('record_id', '?')} cannot be read "
                                  f"({exc.strerror or exc}); restore it or rerun the cell with --force") from None
        if hashlib.sha256(blob).hexdigest() != ref.get("sha256"):
            raise ResultsDirError(f"attachment {path} does not match the sha256 in its record (altered or "
                                  "truncated); restore it or rerun the cell with --force")
        return json.loads(blob)


@dataclass
class StoreCheck:
    """What ``mqbench store check`` finds. ``leftovers`` are safe to delete: temp files of writes that never finished
    (``.*.partial``), publish build folders (``.publish-*``) and attachments no record refers to, each older than
    the grace period (a younger one may belong to a run in progress). ``problems`` need a person: files in
    ``records/`` that are not readable records, and attachments missing or not matching their record's sha256."""

    records: int = 0
    leftovers: list[tuple[Path, str]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def check_store(store: Store, grace_s: float = 600.0, now: float | None = None) -> StoreCheck:
    """Inspect ``store`` without changing anything."""
    now = time.time() if now is None else now
    loaded = store.load()
    out = StoreCheck(records=len(loaded.records), problems=list(loaded.problems))

    def old(path: Path) -> bool:
        try:
            return now - path.lstat().st_mtime >= grace_s
        except OSError:
            return False

    referenced: set[str] = set()
    for path in sorted(store.records_dir.glob("*.json")) if store.records_dir.is_dir() else []:
        try:  # any parseable file's references count, so an attachment of a record left out is not deleted
            refs = json.loads(path.read_text(encoding="utf-8")).get("attachments") or {}
            referenced |= {ref["path"] for ref in refs.values() if isinstance(ref, dict) and isinstance(ref.get("path"), str)}
        except (OSError, ValueError, AttributeError):
            continue
    for record in loaded.records:
        for key in record.get("attachments") or {}:
            try:
                store.attachment(record, key)
            except ResultsDirError as exc:
                out.problems.append((Path(record["_path"]), str(exc)))
    for folder in (store.records_dir, store.root / "attachments"):
        for path in sorted(folder.glob(".*.partial")) if folder.is_dir() else []:
            if old(path):
                out.leftovers.append((path, "temp file of a write that never finished"))
    for path in sorted(store.root.glob(".publish-*")) if store.root.is_dir() else []:
        if old(path):
            out.leftovers.append((path, "build folder of a publish that never finished"))
    attachments = store.root / "attachments"
    for path in sorted(attachments.glob("*.json")) if attachments.is_dir() else []:
        if path.relative_to(store.root).as_posix() not in referenced and old(path):
            out.leftovers.append((path, "attachment no record refers to"))
    return out


def repair_store(check: StoreCheck) -> list[Path]:
    """Delete the leftovers ``check`` found (never a record, never a referenced attachment); the paths removed."""
    removed = []
    for path, _ in check.leftovers:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def newest_per_config(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest of each config hash's records (``records`` sorted oldest first, as ``Store.load`` gives them)."""
    newest: dict[str, dict[str, Any]] = {}
    for r in records:
        newest[r["config_hash"]] = r
    return list(newest.values())


def new_record_id() -> str:
    return uuid.uuid4().hex
