"""The review of one report: which images it may serve, what the technologist
decided, and what it writes.

Files, all in the output folder (``--out``, default: the report's folder),
named from the report ``REPORT.json``:

* ``REPORT.review-state.json`` — the decisions, written atomically after each
  one (a crash or a closed tab loses nothing; reopening continues);
* ``corrections.csv`` — one row per reviewed cell, header
  ``path,sha256,predicted,confidence,corrected,reviewer,reviewed_at,model_sha256``
  (what ``wbc-edge adapt --labeled`` reads);
* ``REPORT.reviewed.json`` — the report with its predictions kept, each
  cell's decision and the reviewer added, and the reviewed differential.

A file of those names that this review did not write (its sha256 is not the
one the state recorded) is never overwritten: opening refuses, saying which.
"""

from __future__ import annotations

import copy
import csv
import getpass
import hashlib
import io
import json
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import WbcEdgeError

STATE_FORMAT = "wbc-edge-review-state/1"
CSV_HEADER = ["path", "sha256", "predicted", "confidence", "corrected", "reviewer", "reviewed_at", "model_sha256"]
CORRECTIONS_NAME = "corrections.csv"
#: The largest image file served (bigger ones are not cell crops).
MAX_IMAGE_BYTES = 64 << 20
MAX_REVIEWER_LENGTH = 100

# File signatures of the image types classify reads; anything else is not served.
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


class ReviewError(WbcEdgeError):
    """A review request that cannot be done; ``status`` is the HTTP status
    the page answers with (400 malformed, 404 no such cell, 409 conflict,
    422 unknown class)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServedImage:
    """An image the report lists and the page may show: its absolute path as
    found at start-up and the real path (symlinks resolved) it had then."""

    path: Path
    real: Path


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a reader (or a crash) sees the old
    file or the new one, never half of one: :func:`wbc_edge.atomic.write_atomic`
    (a temporary file created with O_EXCL in the same folder, fsynced, renamed
    over ``path``; never through a link)."""
    from ..atomic import write_atomic

    write_atomic(path, data)


def csv_safe(value: Any) -> str:
    """A CSV field a spreadsheet will not run: text starting with = + - @ tab
    or CR gets a leading single quote (OWASP's recommendation)."""
    from ..report import csv_text

    return csv_text("" if value is None else str(value))


def check_reviewer(name: Any) -> str:
    if not isinstance(name, str):
        raise ReviewError("reviewer must be a string")
    name = name.strip()
    if not name:
        raise ReviewError("reviewer must not be empty")
    if len(name) > MAX_REVIEWER_LENGTH:
        raise ReviewError(f"reviewer must be at most {MAX_REVIEWER_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ReviewError("reviewer must not contain control characters")
    return name


def image_type(head: bytes) -> str | None:
    for signature, content_type in _SIGNATURES:
        if head.startswith(signature):
            return content_type
    return None


def resolve_listed_image(listed: str, bases: list[Path]) -> Path | None:
    """Where the report's ``path`` is on this machine: an absolute path as it
    is, a relative one under the first of ``bases`` (the current folder, then
    the report's) where it is a regular file."""
    p = Path(listed)
    candidates = [p] if p.is_absolute() else [base / p for base in bases]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return Path(os.path.abspath(candidate))
        except OSError:
            continue
    return None


def reviewed_differential(labels: list[str], classes: list[str]) -> dict[str, Any]:
    counts = {c: 0 for c in classes}
    for label in labels:
        counts[label] += 1
    total = sum(counts.values())
    return {"counts": counts, "percent": {c: (100.0 * n / total if total else 0.0) for c, n in counts.items()},
            "total": total}


class ReviewSession:
    """The review of one report. Thread-safe: the server's worker threads
    call it concurrently.

    Cells are addressed by their index in the report's ``images`` list; only
    classified entries (``error`` is None) are cells.
    """

    def __init__(self, report_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 reviewer: str | None = None, *, image_bases: list[Path] | None = None):
        self.report_path = Path(os.path.abspath(report_path))
        try:
            raw = self.report_path.read_bytes()
        except OSError as error:
            raise WbcEdgeError(f"cannot read the report {report_path}: {error.strerror or error}") from None
        try:
            report = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WbcEdgeError(f"{report_path} is not a JSON report ({error})") from None
        self.report = _check_report(report, report_path)
        self.report_sha256 = sha256_bytes(raw)
        self.classes: list[str] = list(self.report["model"]["classes"])
        self.out_dir = Path(os.path.abspath(out_dir)) if out_dir is not None else self.report_path.parent
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise WbcEdgeError(f"--out {self.out_dir} is not a folder")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WbcEdgeError(f"cannot create --out {self.out_dir}: {error.strerror or error}") from None
        stem = self.report_path.name[:-5] if self.report_path.name.lower().endswith(".json") else self.report_path.name
        self.state_path = self.out_dir / f"{stem}.review-state.json"
        self.reviewed_path = self.out_dir / f"{stem}.reviewed.json"
        self.corrections_path = self.out_dir / CORRECTIONS_NAME
        for path in (self.state_path, self.reviewed_path, self.corrections_path):
            if path.resolve() == self.report_path.resolve():
                raise WbcEdgeError(f"the review would overwrite its own report {path}; choose another --out")

        images = self.report["images"]
        self.cells = [i for i, e in enumerate(images) if e.get("error") is None]
        self._cell_set = set(self.cells)
        self.flagged = [i for i in self.cells if images[i].get("review")]
        bases = image_bases if image_bases is not None else [Path.cwd(), self.report_path.parent]
        self._served: dict[int, ServedImage] = {}
        self.missing: list[int] = []
        for i in self.cells:
            found = resolve_listed_image(images[i]["path"], bases) if isinstance(images[i].get("path"), str) else None
            if found is None:
                self.missing.append(i)
            else:
                self._served[i] = ServedImage(found, Path(os.path.realpath(found)))
        self._hashes: dict[tuple, str] = {}
        self._lock = threading.RLock()

        self.model_sha256, self.model_sha256_source = self._model_sha256()
        self._load_state(reviewer)

    # ------------------------------------------------------------ state file

    def _load_state(self, reviewer: str | None) -> None:
        state = None
        if self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_bytes())
            except (OSError, ValueError) as error:
                raise WbcEdgeError(f"{self.state_path} exists but is not a review state ({error}); "
                                   "move it away or choose another --out") from None
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                raise WbcEdgeError(f"{self.state_path} exists and is not a wbc-edge review state; "
                                   "move it away or choose another --out")
            if state.get("report", {}).get("sha256") != self.report_sha256:
                raise WbcEdgeError(
                    f"{self.state_path} is the review of another report (or of {self.report_path.name} before it "
                    "changed); move it away to start a new review, or choose another --out")
        self.resumed = state is not None
        state = state or {}
        try:
            self.decisions: dict[int, dict] = {
                int(key): d for key, d in (state.get("decisions") or {}).items() if _valid(d, self.classes)}
            self.history: list[dict] = [
                h for h in state.get("history") or []
                if int(h["cell"]) in self._cell_set and _valid(h["after"], self.classes)
                and (h.get("before") is None or _valid(h["before"], self.classes))]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise WbcEdgeError(f"{self.state_path} is damaged; move it away to start a new review") from None
        if any(cell not in self._cell_set for cell in self.decisions):
            raise WbcEdgeError(f"{self.state_path} has decisions for cells this report does not have; "
                               "move it away to start a new review")
        self.signed_off: dict | None = state.get("signed_off")
        self.started = state.get("started") or now_utc()
        self.outputs: dict[str, str] = dict(state.get("outputs") or {})
        self.reviewer = check_reviewer(reviewer) if reviewer else (state.get("reviewer") or _login_name())
        for path in (self.reviewed_path, self.corrections_path):
            self._check_ours(path)

    def _check_ours(self, path: Path) -> None:
        """Refuses to go on when ``path`` exists and is not what this review wrote."""
        if not path.exists():
            return
        try:
            digest = sha256_file(path)
        except OSError as error:
            raise WbcEdgeError(f"cannot read {path}: {error}") from None
        if self.outputs.get(path.name) != digest:
            raise WbcEdgeError(f"{path} exists and was not written by this review of {self.report_path.name}; "
                               "it is left as it is: move it away or choose another --out")

    def _save(self) -> None:
        state = {
            "format": STATE_FORMAT,
            "report": {"path": str(self.report_path), "sha256": self.report_sha256},
            "reviewer": self.reviewer,
            "started": self.started,
            "updated": now_utc(),
            "decisions": {str(k): v for k, v in sorted(self.decisions.items())},
            "history": self.history,
            "signed_off": self.signed_off,
            "outputs": self.outputs,
        }
        atomic_write(self.state_path, (json.dumps(state, indent=1) + "\n").encode())

    # --------------------------------------------------------------- queries

    def entry(self, cell: int) -> dict:
        return self.report["images"][cell]

    def check_cell(self, cell: Any) -> int:
        if isinstance(cell, bool) or not isinstance(cell, int):
            raise ReviewError("cell must be an integer index into the report's images")
        if cell not in self._cell_set:
            raise ReviewError(f"no classified cell {cell} in this report", 404)
        return cell

    def current_label(self, cell: int) -> str:
        d = self.decisions.get(cell)
        return d["corrected"] if d else self.entry(cell)["label"]

    def progress(self) -> dict[str, int]:
        reviewed_flagged = sum(1 for i in self.flagged if i in self.decisions)
        changed = sum(1 for i, d in self.decisions.items() if d["corrected"] != self.entry(i)["label"])
        return {"cells": len(self.cells), "flagged": len(self.flagged), "flagged_reviewed": reviewed_flagged,
                "reviewed": len(self.decisions), "changed": changed}

    def snapshot(self) -> dict[str, Any]:
        """What the page shows of the review's state (after every action)."""
        with self._lock:
            diff = reviewed_differential([self.current_label(i) for i in self.cells], self.classes)
            flagged_left = {c: 0 for c in self.classes}
            for i in self.flagged:
                if i not in self.decisions:
                    flagged_left[self.entry(i)["label"]] += 1
            return {
                "decisions": {str(k): v for k, v in sorted(self.decisions.items())},
                "progress": self.progress(),
                "differential": {**diff, "flagged_left": flagged_left},
                "can_undo": bool(self.history) and self.signed_off is None,
                "signed_off": self.signed_off,
                "reviewer": self.reviewer,
                "outputs": {name: str(self.out_dir / name) for name in self.outputs},
            }

    def session(self) -> dict[str, Any]:
        """Everything the page needs to draw itself."""
        report = self.report
        cells = []
        for i in self.cells:
            e = self.entry(i)
            probabilities = e.get("probabilities") or {}
            top = sorted(probabilities.items(), key=lambda kv: -kv[1])
            cells.append({
                "cell": i, "path": e["path"], "name": os.path.basename(str(e["path"])),
                "predicted": e["label"], "confidence": e.get("confidence"), "top": top,
                "flagged": bool(e.get("review")), "reason": e.get("review_reason"),
                "ood": e.get("out_of_distribution"), "ood_score": e.get("ood_score"),
                "image": i in self._served,
            })
        unreadable = [{"cell": i, "path": e.get("path"), "error": e.get("error")}
                      for i, e in enumerate(report["images"]) if e.get("error") is not None]
        model = report["model"]
        return {
            "report": {"name": self.report_path.name, "path": str(self.report_path), "created": report.get("created"),
                       "model": {k: model.get(k) for k in ("name", "precision", "backend", "variant", "path")},
                       "model_sha256": self.model_sha256, "review_policy": report.get("review_policy"),
                       "domain_check": report.get("domain_check")},
            "classes": self.classes,
            "keys": class_keys(self.classes),
            "cells": cells,
            "unreadable": unreadable,
            "missing": self.missing,
            "out_dir": str(self.out_dir),
            "resumed": self.resumed,
            "state": self.snapshot(),
        }

    # ---------------------------------------------------------------- images

    def image_path(self, cell: int) -> Path | None:
        served = self._served.get(cell)
        return served.path if served else None

    def read_image(self, cell: Any) -> tuple[bytes, str]:
        """The bytes and content type of a cell's image. Only images the
        report lists are served, and only while their real path is the one
        they had at start-up (a symlink re-pointed since is refused) and they
        are still image files."""
        cell = self.check_cell(cell)
        served = self._served.get(cell)
        if served is None:
            raise ReviewError(f"the image of cell {cell} is not on this machine", 404)
        real = Path(os.path.realpath(served.path))
        if real != served.real:
            raise ReviewError(f"the image of cell {cell} now points elsewhere; not served", 404)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            raise ReviewError(f"the image of cell {cell} cannot be read", 404) from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE_BYTES:
                raise ReviewError(f"the image of cell {cell} is not a regular image file", 404)
            data = f.read(MAX_IMAGE_BYTES + 1)
        content_type = image_type(data[:16])
        if content_type is None or len(data) > MAX_IMAGE_BYTES:
            raise ReviewError(f"the file of cell {cell} is not an image", 404)
        return data, content_type

    def image_sha256(self, cell: int) -> str:
        served = self._served.get(cell)
        if served is None:
            return ""
        try:
            info = os.stat(served.real)
            key = (cell, info.st_mtime_ns, info.st_size)
            if key not in self._hashes:
                self._hashes[key] = sha256_file(served.real)
            return self._hashes[key]
        except OSError:
            return ""

    # --------------------------------------------------------------- actions

    def _check_open(self) -> None:
        if self.signed_off is not None:
            raise ReviewError(f"this review was signed off by {self.signed_off['by']} at {self.signed_off['at']}; "
                              "it can no longer change", 409)

    def decide(self, cell: Any, corrected: Any) -> dict:
        """Records that ``cell`` is ``corrected`` (its predicted class:
        approved). Returns the decision."""
        if not isinstance(corrected, str):
            raise ReviewError("corrected must be a class name")
        with self._lock:
            self._check_open()
            cell = self.check_cell(cell)
            if corrected not in self.classes:
                raise ReviewError(f"unknown class {corrected!r}; the model's classes are {', '.join(self.classes)}",
                                  422)
            predicted = self.entry(cell)["label"]
            decision = {"predicted": predicted, "corrected": corrected, "reviewer": self.reviewer,
                        "reviewed_at": now_utc()}
            self.history.append({"cell": cell, "before": self.decisions.get(cell), "after": decision})
            self.decisions[cell] = decision
            self._save()
            return decision

    def undo(self) -> int:
        """Takes back the last decision; returns its cell."""
        with self._lock:
            self._check_open()
            if not self.history:
                raise ReviewError("nothing to undo", 409)
            last = self.history.pop()
            cell = int(last["cell"])
            if last.get("before") is None:
                self.decisions.pop(cell, None)
            else:
                self.decisions[cell] = last["before"]
            self._save()
            return cell

    def sign_off(self) -> dict:
        """Signs the differential off; refused while flagged cells are unreviewed."""
        with self._lock:
            self._check_open()
            left = [i for i in self.flagged if i not in self.decisions]
            if left:
                raise ReviewError(f"sign-off refused: {len(left)} of {len(self.flagged)} flagged cells are not "
                                  "reviewed yet", 409)
            self.signed_off = {"by": self.reviewer, "at": now_utc()}
            try:
                written = self._export()
            except BaseException:
                self.signed_off = None
                raise
            return {"signed_off": self.signed_off, "written": written}

    def export(self) -> dict:
        """Writes corrections.csv and REPORT.reviewed.json (at any time; the
        reviewed report says whether it was signed off)."""
        with self._lock:
            return {"written": self._export()}

    def _export(self) -> dict[str, str]:
        outputs = {self.corrections_path: self.corrections_csv().encode(),
                   self.reviewed_path: (json.dumps(self.reviewed_report(), indent=2) + "\n").encode()}
        for path in outputs:
            self._check_ours(path)
        for path, data in outputs.items():
            atomic_write(path, data)
            self.outputs[path.name] = sha256_bytes(data)
        self._save()
        return {"corrections": str(self.corrections_path), "reviewed_report": str(self.reviewed_path)}

    # --------------------------------------------------------------- exports

    def corrections_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for cell in sorted(self.decisions):
            d, e = self.decisions[cell], self.entry(cell)
            path = self.image_path(cell) or e["path"]
            confidence = e.get("confidence")
            writer.writerow([csv_safe(v) for v in (
                path, self.image_sha256(cell), e["label"],
                "" if confidence is None else f"{confidence:.6f}",
                d["corrected"], d["reviewer"], d["reviewed_at"], self.model_sha256 or "")])
        return out.getvalue()

    def reviewed_report(self) -> dict[str, Any]:
        report = copy.deepcopy(self.report)
        for i, e in enumerate(report["images"]):
            d = self.decisions.get(i)
            e["reviewed"] = None if d is None else {
                "label": d["corrected"], "changed": d["corrected"] != e["label"],
                "reviewer": d["reviewer"], "reviewed_at": d["reviewed_at"]}
        report["reviewed_differential"] = reviewed_differential(
            [self.current_label(i) for i in self.cells], self.classes)
        report["review_session"] = {
            "status": "signed off" if self.signed_off else "in progress",
            "signed_off": self.signed_off,
            "reviewer": self.reviewer,
            "started": self.started,
            "exported": now_utc(),
            "source_report": {"path": str(self.report_path), "sha256": self.report_sha256},
            "model_sha256": self.model_sha256,
            "model_sha256_source": self.model_sha256_source,
            **self.progress(),
            "corrections_csv": self.corrections_path.name,
        }
        return report

    # ----------------------------------------------------------------- model

    def _model_sha256(self) -> tuple[str | None, str]:
        model = self.report["model"]
        if isinstance(model.get("sha256"), str) and model["sha256"]:
            return model["sha256"], "report"
        path = model.get("path")
        if isinstance(path, str) and Path(path).is_file():
            try:
                return sha256_file(path), "the model file at review time (the report records none)"
            except OSError:
                pass
        return None, "unknown (the report records none and its model file is not here)"


def class_keys(classes: list[str]) -> dict[str, str]:
    """One key per class: 1..9, then 0, then letters (never u, the undo key,
    nor c, the CAM key)."""
    pool = [*"123456789", "0", *"qwertyiopasdfghjklzxvbnm"]
    if len(classes) > len(pool):
        raise WbcEdgeError(f"the page has keys for {len(pool)} classes; this model has {len(classes)}")
    return {c: pool[i] for i, c in enumerate(classes)}


def _valid(decision: Any, classes: list[str]) -> bool:
    return isinstance(decision, dict) and decision.get("corrected") in classes \
        and isinstance(decision.get("reviewer"), str) and isinstance(decision.get("reviewed_at"), str)


def _login_name() -> str:
    try:
        return check_reviewer(getpass.getuser())
    except Exception:
        return "unknown"


def _check_report(report: Any, where) -> dict:
    """The fields the review needs, with their types, or a clear error."""
    def bad(why: str):
        raise WbcEdgeError(f"{where} is not a wbc-edge classify report: {why} (make one with "
                           "'wbc-edge classify DIR --out report.json')")

    if not isinstance(report, dict):
        bad("not a JSON object")
    model = report.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("classes"), list) or not model["classes"] \
            or not all(isinstance(c, str) for c in model["classes"]):
        bad("no model.classes")
    classes = set(model["classes"])
    if len(classes) != len(model["classes"]):
        bad("model.classes has duplicates")
    images = report.get("images")
    if not isinstance(images, list):
        bad("no images list")
    for i, e in enumerate(images):
        if not isinstance(e, dict) or "path" not in e:
            bad(f"images[{i}] has no path")
        if e.get("error") is None and e.get("label") not in classes:
            bad(f"images[{i}] has label {e.get('label')!r}, not one of the model's classes")
    return report
