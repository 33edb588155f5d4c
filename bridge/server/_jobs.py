"""Workspace jobs: uploads streamed to disk, one child process per job, progress, cancel, expiry.

Layer: server.  Everything a job has lives in the server's work folder (a fresh temporary
folder, removed at shutdown, unless ``SCBRIDGE_WORK_DIR`` names one)::

    uploads/<id>/upload.json, data     an upload not yet used by a job (expires after an hour)
    jobs/<id>/job.json                 owner, options, state: written by the server only
    jobs/<id>/progress.json            stage and fraction: written by the job process only
    jobs/<id>/input/<name>             the uploaded file (moved there from uploads/)
    jobs/<id>/results/                 calls.parquet, matrix.arrow, view.json, result.json ...
    jobs/<id>/edits.json               curation edits (see :mod:`._curation`)
    jobs/<id>/exports/                 prepared downloads
    tokens/<sha256 of token>.json      one-time download tokens

State is on disk, not in one process's memory, so the processes of ``scbridge serve
--workers N`` sharing one work folder all see every job; the process that started a job
watches its child and is the one that cancels it (any process may ask, through a flag file).

Each job belongs to the SHA-256 digest of the API key that created it; a job of another key
answers 404, exactly like a job that does not exist.  Jobs run in a child process
(``python -m bridge.server._job_run``): R is not thread-safe, a crash or an out-of-memory kill
stays in the child, and cancelling is killing its process group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio

from ._problems import ApiError

__all__ = [
    "INPUT_SUFFIXES",
    "JobManager",
    "WorkspaceLimits",
    "owner_of",
    "read_json",
    "write_json",
]

logger = logging.getLogger("bridge.server.jobs")

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: tuple[str, ...] = ("done", "failed", "cancelled")
# What the workspace reads, by suffix: the label the page shows and how the file begins.
INPUT_SUFFIXES: dict[str, str] = {
    ".h5ad": "AnnData (.h5ad)",
    ".rds": "R object (.rds)",
    ".rdata": "R workspace (.RData)",
    ".rda": "R workspace (.rda)",
    ".arrow": "Arrow CSR file (.arrow)",
    ".arrows": "Arrow CSR stream (.arrows)",
    ".h5": "10x Genomics matrix (.h5)",
}
_HDF5 = b"\x89HDF\r\n\x1a\n"
_R_STARTS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"X\n", b"A\n", b"B\n", b"RDX", b"RDA",
             b"(\xb5/\xfd")
_ARROW_STARTS = (b"ARROW1", b"\xff\xff\xff\xff")
_ID = re.compile(r"^[0-9a-f]{32}$")
DOWNLOAD_TTL_S = 120.0
LOGIN_TTL_S = 900.0


def owner_of(api_key: str | None) -> str:
    """The owner of the jobs made with ``api_key``: its SHA-256 digest (hex); the key itself
    is never stored.  Without keys (``--no-auth``) every job belongs to one anonymous owner."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        from .._errors import InputError

        msg = f"${name} must be a number, got {raw!r}."
        raise InputError(msg) from None


@dataclass(frozen=True)
class WorkspaceLimits:
    """What the workspace allows (defaults; ``from_env`` reads the overrides).

    Parameters
    ----------
    work_dir
        The work folder; ``None`` makes a fresh temporary one, removed at shutdown.
        Environment: ``SCBRIDGE_WORK_DIR``.
    max_upload_bytes
        Largest upload (the service's body limit, ``--max-body-mb``).
    max_cells
        Most cells in one job (the service's ``--max-cells``).
    max_jobs_per_key, max_jobs
        Jobs kept at once per API key and in all (``SCBRIDGE_WORKSPACE_MAX_JOBS`` sets the
        first; the second is eight times that).
    max_work_bytes
        Disk the work folder may use (``SCBRIDGE_WORKSPACE_MAX_GB``).
    job_ttl_s, upload_ttl_s
        Finished jobs and unused uploads are removed after this long
        (``SCBRIDGE_WORKSPACE_TTL_HOURS`` for jobs).
    running_jobs
        Jobs computed at once per server process (the service's ``--threads``); the others
        wait, queued.
    """

    work_dir: str | None = None
    max_upload_bytes: int = 1024 * 1024 * 1024
    max_cells: int = 100_000
    max_jobs_per_key: int = 8
    max_jobs: int = 64
    max_work_bytes: int = 20 * 1024**3
    job_ttl_s: float = 24 * 3600.0
    upload_ttl_s: float = 3600.0
    running_jobs: int = 1

    @classmethod
    def from_env(cls, *, max_upload_bytes: int, max_cells: int, running_jobs: int
                 ) -> WorkspaceLimits:
        per_key = int(_env_number("SCBRIDGE_WORKSPACE_MAX_JOBS", cls.max_jobs_per_key))
        return cls(
            work_dir=os.environ.get("SCBRIDGE_WORK_DIR") or None,
            max_upload_bytes=max_upload_bytes,
            max_cells=max_cells,
            max_jobs_per_key=max(1, per_key),
            max_jobs=max(1, 8 * per_key),
            max_work_bytes=int(_env_number("SCBRIDGE_WORKSPACE_MAX_GB", 20) * 1024**3),
            job_ttl_s=_env_number("SCBRIDGE_WORKSPACE_TTL_HOURS", 24) * 3600.0,
            running_jobs=max(1, running_jobs),
        )


@dataclass
class _Running:
    thread: threading.Thread
    process: subprocess.Popen[bytes] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


class JobManager:
    """Uploads, jobs and downloads of one server process (see the module docstring)."""

    def __init__(self, limits: WorkspaceLimits) -> None:
        self.limits = limits
        self._root: Path | None = Path(limits.work_dir) if limits.work_dir else None
        self._owns_root = limits.work_dir is None
        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(max(1, limits.running_jobs))
        self._running: dict[str, _Running] = {}
        self._logins: dict[str, tuple[str, float]] = {}
        self._closing = threading.Event()
        self._usage: tuple[float, int] | None = None

    # -- folders --------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The work folder (made on first use)."""
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="scbridge-workspace-"))
                logger.info("workspace work folder %s", self._root)
            for sub in ("uploads", "jobs", "tokens"):
                (self._root / sub).mkdir(parents=True, exist_ok=True)
            return self._root

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def close(self) -> None:
        """Stop running jobs and, for a temporary work folder, remove it."""
        self._closing.set()
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.cancel.set()
        for run in running:
            run.thread.join(timeout=10)
        if self._owns_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    # -- disk use -------------------------------------------------------------------------
    def disk_usage(self, *, fresh: bool = False) -> int:
        """Bytes in the work folder (recounted at most every two seconds)."""
        now = time.monotonic()
        if not fresh and self._usage is not None and now - self._usage[0] < 2.0:
            return self._usage[1]
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        self._usage = (now, total)
        return total

    def _check_room(self, incoming: int) -> None:
        used = self.disk_usage(fresh=True)
        if used + incoming > self.limits.max_work_bytes:
            raise ApiError(507, "workspace_full",
                           f"the workspace has {used / 1e9:.2f} GB of "
                           f"{self.limits.max_work_bytes / 1e9:.2f} GB in use; this needs "
                           f"{incoming / 1e9:.2f} GB more.",
                           "delete finished jobs you no longer need (DELETE "
                           "/v1/workspace/jobs/{id}), or ask the administrator for room")

    # -- uploads --------------------------------------------------------------------------
    async def receive_upload(self, owner: str, filename: str, chunks: AsyncIterator[bytes],
                             declared: int | None) -> dict[str, Any]:
        """Stream an upload to disk under the size limit; returns its description."""
        from ._body import DRAIN_LIMIT

        name = safe_filename(filename)
        suffix = Path(name).suffix.lower()
        if suffix not in INPUT_SUFFIXES:
            raise ApiError(422, "unsupported_file_type",
                           f"{name!r}: the workspace reads {', '.join(INPUT_SUFFIXES)} files, "
                           f"not {suffix or 'files without a suffix'}.",
                           "upload an .h5ad, a Seurat / SingleCellExperiment / dgCMatrix .rds, "
                           "an Arrow CSR .arrow file or a 10x .h5")
        limit = self.limits.max_upload_bytes
        too_large = ApiError(413, "body_too_large",
                             f"{name} is larger than this server's upload limit of "
                             f"{limit / 1024**2:,.0f} MiB.",
                             "subset the data, or start the server with a larger --max-body-mb")
        if declared is not None and declared > limit:
            if declared <= limit + DRAIN_LIMIT:
                # Read the body before refusing, so a browser sees the 413, not a reset.
                async for _ in chunks:
                    pass
            raise too_large
        self.sweep()
        await anyio.to_thread.run_sync(self._check_room, declared or 0)
        upload_id = secrets.token_hex(16)
        folder = self.root / "uploads" / upload_id
        folder.mkdir(parents=True)
        data = folder / "data"
        size = 0
        head = b""
        try:
            with data.open("wb") as sink:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    if len(head) < 16:
                        head += chunk[:16]
                    await anyio.to_thread.run_sync(sink.write, chunk)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            check_file_start(name, head, size)
        except ApiError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        info = {"id": upload_id, "owner": owner, "name": name, "size": size,
                "format": INPUT_SUFFIXES[suffix], "created": time.time()}
        write_json(folder / "upload.json", info)
        logger.info("upload %s: %s, %d bytes", upload_id, INPUT_SUFFIXES[suffix], size)
        return {k: v for k, v in info.items() if k != "owner"}

    def _take_upload(self, owner: str, upload_id: str) -> tuple[Path, dict[str, Any]]:
        folder = self.root / "uploads" / upload_id if _ID.match(upload_id) else None
        info = read_json(folder / "upload.json") if folder else None
        if folder is None or info is None or info.get("owner") != owner:
            raise ApiError(404, "upload_not_found", f"no upload {upload_id[:40]!r}.",
                           "upload the file first (POST /v1/workspace/uploads); an upload is "
                           "used by one job and kept for an hour")
        return folder, info

    # -- jobs -----------------------------------------------------------------------------
    def create(self, owner: str, options: dict[str, Any], engine: dict[str, Any], *,
               upload_id: str | None = None, path: str | None = None) -> dict[str, Any]:
        """A new job on an upload (or, for ``scbridge workspace``, a local file read in
        place), queued to run; returns its status.

        ``options`` are what the client chose (shown back to it); ``engine`` is how the job
        process runs them (model, the atlas's server-side value, engine parameters, layout)
        and is never shown.
        """
        self.sweep()
        with self._lock:
            mine = [j for j in self._all_jobs() if j.get("owner") == owner]
            if len(mine) >= self.limits.max_jobs_per_key:
                raise ApiError(429, "too_many_jobs",
                               f"this API key has {len(mine)} jobs, the most this server keeps "
                               "per key.", "delete jobs you no longer need "
                               "(DELETE /v1/workspace/jobs/{id}) and try again")
            if len(self._all_jobs()) >= self.limits.max_jobs:
                raise ApiError(503, "server_busy", "the workspace holds as many jobs as it "
                               "may.", "try again later", {"Retry-After": "60"})
            self._check_room(0)
            job_id = secrets.token_hex(16)
            folder = self.job_dir(job_id)
            (folder / "results").mkdir(parents=True)
            (folder / "exports").mkdir()
            if upload_id is not None:
                upload_folder, info = self._take_upload(owner, upload_id)
                name = str(info["name"])
                # Under its own name, which then reads naturally in the job's messages.
                (folder / "input").mkdir()
                source = folder / "input" / f"{Path(name).stem}{Path(name).suffix.lower()}"
                os.replace(upload_folder / "data", source)
                shutil.rmtree(upload_folder, ignore_errors=True)
                input_path, size = str(source), int(info["size"])
            elif path is not None:
                name, input_path = Path(path).name, str(Path(path).resolve())
                size = Path(path).stat().st_size if Path(path).is_file() else 0
            else:  # pragma: no cover - the routes always pass one
                msg = "create() needs upload_id or path"
                raise ValueError(msg)
            job = {"id": job_id, "owner": owner, "name": name, "input": input_path,
                   "input_size": size, "options": options, "engine": engine,
                   "max_cells": self.limits.max_cells,
                   "state": "queued", "created": time.time(), "started": None,
                   "finished": None, "error": None, "server_pid": os.getpid()}
            write_json(folder / "job.json", job)
            run = _Running(threading.Thread(target=self._run, args=(job_id,), daemon=True,
                                            name=f"scbridge-job-{job_id[:8]}"))
            self._running[job_id] = run
        logger.info("job %s queued: %s (%s)", job_id, name, options.get("model"))
        run.thread.start()
        return self.status(owner, job_id)

    def _all_jobs(self) -> list[dict[str, Any]]:
        jobs = []
        for folder in (self.root / "jobs").iterdir():
            job = read_json(folder / "job.json")
            if job is not None:
                jobs.append(job)
        return jobs

    def job(self, owner: str, job_id: str) -> dict[str, Any]:
        """The job record, or 404 for an unknown job and for another key's job alike."""
        job = read_json(self.job_dir(job_id) / "job.json") if _ID.match(job_id) else None
        if job is None or job.get("owner") != owner:
            raise ApiError(404, "job_not_found", f"no job {job_id[:40]!r} for this API key.",
                           "GET /v1/workspace/jobs lists your jobs; jobs expire "
                           f"{self.limits.job_ttl_s / 3600:g} h after they finish")
        return dict(job)

    def status(self, owner: str, job_id: str) -> dict[str, Any]:
        """What a client sees of a job: state, stage, progress, error, timings."""
        job = self.job(owner, job_id)
        progress = read_json(self.job_dir(job_id) / "progress.json", {}) or {}
        fraction = 1.0 if job["state"] == "done" else float(progress.get("fraction", 0.0))
        return {
            "id": job["id"], "name": job["name"], "state": job["state"],
            "stage": "finished" if job["state"] in FINISHED else progress.get("stage",
                                                                              job["state"]),
            "stages": list(progress.get("stages", [])),
            "progress": round(fraction, 4), "message": progress.get("message", ""),
            "options": job["options"], "created": job["created"], "started": job["started"],
            "finished": job["finished"], "error": job["error"],
            "n_cells": progress.get("n_cells"),
        }

    def list(self, owner: str) -> list[dict[str, Any]]:
        self.sweep()
        jobs = [j for j in self._all_jobs() if j.get("owner") == owner]
        jobs.sort(key=lambda j: j["created"], reverse=True)
        return [self.status(owner, j["id"]) for j in jobs]

    def cancel(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self.job(owner, job_id)
        if job["state"] not in FINISHED:
            (self.job_dir(job_id) / "cancel").touch()
            with self._lock:
                run = self._running.get(job_id)
            if run is not None:
                run.cancel.set()
                run.thread.join(timeout=15)
        return self.status(owner, job_id)

    def delete(self, owner: str, job_id: str) -> None:
        job = self.job(owner, job_id)
        if job["state"] not in FINISHED:
            self.cancel(owner, job_id)
        self._remove_job(job_id)

    def _remove_job(self, job_id: str) -> None:
        folder = self.job_dir(job_id)
        job = read_json(folder / "job.json", {}) or {}
        # The job folder holds its input unless it was a local file read in place.
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("job %s removed (%s)", job_id, job.get("name", "?"))
        self._usage = None

    def _update(self, job_id: str, **changes: Any) -> None:
        path = self.job_dir(job_id) / "job.json"
        with self._lock:
            job = read_json(path)
            if job is None:
                return
            job.update(changes)
            write_json(path, job)

    def _run(self, job_id: str) -> None:
        """Runs in a thread per job: wait for a slot, run the child, record how it ended."""
        with self._lock:
            run = self._running[job_id]
        folder = self.job_dir(job_id)
        try:
            while not self._slots.acquire(timeout=0.2):
                if self._cancel_requested(run, folder):
                    self._finish(job_id, "cancelled", None)
                    return
            try:
                if self._cancel_requested(run, folder):
                    self._finish(job_id, "cancelled", None)
                    return
                self._run_child(job_id, run, folder)
            finally:
                self._slots.release()
        except Exception:  # a bug here must not leave the job 'running' forever
            logger.exception("job %s: the job runner failed", job_id)
            self._finish(job_id, "failed", {"code": "internal_error",
                                            "message": "the job runner failed.",
                                            "hint": "see the server log"})
        finally:
            with self._lock:
                self._running.pop(job_id, None)

    def _cancel_requested(self, run: _Running, folder: Path) -> bool:
        if (folder / "cancel").exists():
            run.cancel.set()
        return run.cancel.is_set() or self._closing.is_set()

    def _run_child(self, job_id: str, run: _Running, folder: Path) -> None:
        self._update(job_id, state="running", started=time.time(), server_pid=os.getpid())
        with (folder / "job.log").open("ab") as log:
            process = start_child(["run", str(folder)], log)
            run.process = process
            while True:
                try:
                    code = process.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if self._cancel_requested(run, folder):
                        stop_child(process)
                        self._finish(job_id, "cancelled", None)
                        return
        outcome = read_json(folder / "results" / "result.json")
        error = read_json(folder / "results" / "error.json")
        if code == 0 and outcome is not None:
            self._finish(job_id, "done", None)
        elif error is not None:
            self._finish(job_id, "failed", error)
        else:
            tail = (folder / "job.log").read_text(errors="replace")[-2000:]
            logger.error("job %s: the job process exited with status %s:\n%s", job_id, code,
                         tail)
            reason = ("it was killed, most likely for lack of memory" if code in (-9, 137)
                      else f"it exited with status {code}")
            self._finish(job_id, "failed", {
                "code": "job_crashed", "message": f"the job process stopped: {reason}.",
                "hint": "try a smaller data set; the server log has the details"})

    def _finish(self, job_id: str, state: JobState, error: dict[str, Any] | None) -> None:
        self._update(job_id, state=state, finished=time.time(), error=error)
        logger.info("job %s %s%s", job_id, state, f": {error['message']}" if error else "")

    # -- housekeeping ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Remove expired jobs and uploads; mark jobs of a stopped server as failed."""
        now = time.time()
        for folder in list((self.root / "uploads").iterdir()):
            info = read_json(folder / "upload.json")
            created = info["created"] if info else folder.stat().st_mtime
            if now - created > self.limits.upload_ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
        for job in self._all_jobs():
            if job["state"] in FINISHED:
                if now - (job["finished"] or job["created"]) > self.limits.job_ttl_s:
                    self._remove_job(job["id"])
            elif job["id"] not in self._running and not _pid_alive(job["server_pid"]):
                self._finish(job["id"], "failed", {
                    "code": "server_stopped", "message": "the server stopped while this job "
                    "was queued or running.", "hint": "run the job again"})
        for token in list((self.root / "tokens").iterdir()):
            info = read_json(token)
            if info is None or info.get("expires", 0) < now:
                token.unlink(missing_ok=True)

    # -- one-time tokens ------------------------------------------------------------------
    def issue_download(self, owner: str, job_id: str, path: Path, filename: str,
                       media_type: str) -> str:
        """A single-use token for one file, valid for two minutes: the page downloads with it
        (a plain link the browser saves itself) so the API key never goes into a URL."""
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        write_json(self.root / "tokens" / f"{digest}.json",
                   {"owner": owner, "job": job_id, "path": str(path), "filename": filename,
                    "media_type": media_type, "expires": time.time() + DOWNLOAD_TTL_S})
        return token

    def redeem_download(self, token: str) -> dict[str, Any]:
        digest = hashlib.sha256(token.encode()).hexdigest()
        path = self.root / "tokens" / f"{digest}.json"
        claimed = path.with_name(f"{digest}.{os.getpid()}.claimed")
        try:
            os.replace(path, claimed)  # atomic: of two requests with one token, one wins
        except FileNotFoundError:
            raise ApiError(404, "download_expired", "this download link was used already or "
                           "has expired.", "start the download again from the workspace"
                           ) from None
        info = read_json(claimed, {}) or {}
        claimed.unlink(missing_ok=True)
        if info.get("expires", 0) < time.time() or not Path(info.get("path", "")).is_file():
            raise ApiError(404, "download_expired", "this download link has expired.",
                           "start the download again from the workspace")
        return dict(info)

    def issue_login(self, api_key: str) -> str:
        """A single-use token that the page exchanges for ``api_key`` (``scbridge
        workspace`` puts it in the URL fragment, which browsers never send to servers)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._logins[hashlib.sha256(token.encode()).hexdigest()] = (
                api_key, time.time() + LOGIN_TTL_S)
        return token

    def redeem_login(self, token: str) -> str:
        with self._lock:
            entry = self._logins.pop(hashlib.sha256(token.encode()).hexdigest(), None)
        if entry is None or entry[1] < time.time():
            raise ApiError(401, "login_link_used", "this sign-in link was used already or has "
                           "expired.", "run 'scbridge workspace' again for a new link, or type "
                           "the API key into the page")
        return entry[0]

    def describe(self) -> dict[str, Any]:
        data = asdict(self.limits)
        data.pop("work_dir")
        return data


def safe_filename(name: str) -> str:
    """A display name without folders or control characters (the file is stored under a
    name of the server's choosing anyway)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()[:200]
    return base if base.strip(".") else "upload"


def check_file_start(name: str, head: bytes, size: int) -> None:
    """Refuse an upload whose first bytes do not match its suffix (a renamed or truncated
    file), so the user learns it at once rather than from a failed job."""
    suffix = Path(name).suffix.lower()
    if size == 0:
        raise ApiError(422, "empty_file", f"{name} is empty (0 bytes).",
                       "upload the file itself; check that it was fully written")
    if suffix in (".h5ad", ".h5"):
        ok, kind = head.startswith(_HDF5), "an HDF5 file"
    elif suffix in (".rds", ".rdata", ".rda"):
        ok, kind = head.startswith(_R_STARTS), "an R data file (saveRDS / save)"
    else:
        ok, kind = head.startswith(_ARROW_STARTS), "an Arrow IPC file or stream"
    if not ok:
        shown = head[:8].hex(" ")
        raise ApiError(422, "unrecognised_file",
                       f"{name} is not {kind}: it begins with the bytes {shown}.",
                       f"upload a real {INPUT_SUFFIXES[suffix]}, not a renamed, truncated or "
                       "text file")


def start_child(args: list[str], log: Any) -> subprocess.Popen[bytes]:
    """``python -m bridge.server._job_run ARGS`` with this process's scbridge first on the
    path, in its own process group (so cancelling kills R and anything it started)."""
    import bridge

    env = dict(os.environ)
    package_root = str(Path(bridge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return subprocess.Popen([sys.executable, "-m", "bridge.server._job_run", *args],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)


def stop_child(process: subprocess.Popen[bytes]) -> None:
    """Terminate a child's process group, then kill it if it does not stop within 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across threads and processes (read-modify-write)."""
    import fcntl

    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
