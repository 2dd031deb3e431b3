"""A run folder: one owner at a time, checkpoints that survive any interruption, one run record.

- `write_atomic`: temporary file in the same directory, fsync, rename (then fsync of the directory):
  a crash leaves the old file or the new one, never half of one.
- `RunLock`: `run.lock` (host, pid, start time, settings) created exclusively; a second run on the
  folder refuses; a lock left by a process that no longer exists (same host) is reported and taken over.
- `Checkpointer`: a method's resumable state, saved when `interval` seconds have passed since the last
  save and on interruption (SIGINT, or SIGTERM inside `interruptible()`), with the settings' hash and a
  hash of its content; loading refuses other settings and edited or corrupt files.
- `RunRecord`: `run.json` beside the outputs: settings, versions, machine, and one part per start
  (seconds, forward/backward passes, peak memory); a resumed run adds a part, totals sum them all.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import resource
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from acdc_lite.boundary import InputError, UsageError, read_json_object

log = logging.getLogger(__name__)

LOCK, RECORD = "run.lock", "run.json"
CHECKPOINT_FORMAT = "acdc-lite checkpoint"
CHECKPOINT_VERSION = 2
DEFAULT_INTERVAL = 60.0  # seconds between checkpoints


# ---- files ------------------------------------------------------------------------------------
def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write `text` (or bytes) to `path` via a temporary file in the same directory, fsync and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w", encoding=None if isinstance(text, bytes) else "utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def canonical_hash(value) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_output_dir(directory: str | Path, option: str = "--out") -> Path:
    """Raise a UsageError now (before any work) unless `directory` is, or can be made, a writable folder."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{option} {directory} is a file, not a folder; give a folder for the outputs")
    _check_writable_ancestor(directory, directory, option, "the folder cannot be made")
    return directory


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Raise a UsageError now (before any work) unless a file can be written at `path`."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    _check_writable_ancestor(path, path.parent, option, f"{path.name} cannot be written")
    return path


def _check_writable_ancestor(given: Path, start: Path, option: str, what: str) -> None:
    """A UsageError unless the nearest existing folder at or above `start` is a writable folder."""
    probe = start
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{option} {given}: {probe} is a file, so {what} there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {given}: {probe} is not writable; choose a folder you can write to")


# ---- interruption -----------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `except KeyboardInterrupt` checkpoint path runs."""


@contextlib.contextmanager
def interruptible():
    """Within this block SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- lock -------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`with RunLock(directory, settings):` owns the run folder for the block (see module docstring).

    The folder is created if needed and, when the block fails and left it empty, removed again.
    """

    def __init__(self, directory: str | Path, settings: dict, command: str = "discover"):
        self.directory, self.settings, self.command = Path(directory), settings, command
        self.path = self.directory / LOCK
        self._created_dir = False

    def __enter__(self) -> RunLock:
        self._created_dir = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        facts = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "command": self.command,
                 "settings": self.settings}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._judge_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(facts, f, indent=1)
            return self
        raise UsageError(f"{self.path} keeps reappearing: another run is starting in {self.directory}; use another --out")

    def _judge_existing(self) -> None:
        try:
            other = json.loads(self.path.read_text())
            host, pid, started = other["host"], int(other["pid"]), other.get("started", "?")
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"{self.path} exists but is not a lock this version wrote; if no run uses "
                             f"{self.directory}, delete {self.path}") from None
        if host == socket.gethostname() and not _alive(pid):
            log.warning("stale lock %s: process %d (started %s) no longer exists; taking the folder over", self.path, pid, started)
            self.path.unlink(missing_ok=True)
            return
        where = "this machine" if host == socket.gethostname() else f"host {host}"
        raise UsageError(f"{self.directory} is in use by process {pid} on {where} since {started} ({self.path}); wait for "
                         f"it to finish or use another --out (if that process is gone, delete {self.path})")

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        if self._created_dir and exc[0] is not None:
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only if nothing was written


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---- checkpoints ------------------------------------------------------------------------------
@dataclass
class Checkpointer:
    """Saves and loads one method's resumable state at `path` (see module docstring).

    settings: everything the state depends on (method settings, model fingerprint, task hash); a checkpoint
    with other settings is refused. interval: seconds between saves (`due()`); 0 saves at every chance.
    """

    path: Path
    settings: dict
    interval: float = DEFAULT_INTERVAL
    on_save: Callable[[dict], None] | None = None  # called with the state after each save (the run record's hook)
    _last: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.interval >= 0:
            raise UsageError(f"checkpoint interval must be >= 0 seconds, got {self.interval}")

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval

    def save(self, method: str, state: dict) -> None:
        body = {"method": method, "settings_hash": canonical_hash(self.settings), "settings": self.settings, "state": state}
        doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "content_hash": canonical_hash(body), **body}
        write_atomic(self.path, json.dumps(doc))
        self._last = time.monotonic()
        log.info("checkpoint saved to %s", self.path)
        if self.on_save is not None:
            self.on_save(state)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, method: str) -> dict | None:
        """The saved state, None if there is no checkpoint; InputError/UsageError if it is not this run's."""
        if not self.path.exists():
            return None
        doc = read_json_object(self.path, "checkpoint")
        fix = f"delete {self.path} and start again (without --resume)"
        if doc.get("format") != CHECKPOINT_FORMAT or doc.get("version") != CHECKPOINT_VERSION:
            raise InputError(f"checkpoint {self.path} is not an acdc-lite checkpoint of version {CHECKPOINT_VERSION}; {fix}")
        body = {k: doc.get(k) for k in ("method", "settings_hash", "settings", "state")}
        if doc.get("content_hash") != canonical_hash(body) or body["settings_hash"] != canonical_hash(body["settings"]):
            raise InputError(f"checkpoint {self.path}: content_hash does not match its content (edited or corrupt); {fix}")
        if body["method"] != method:
            raise UsageError(f"checkpoint {self.path} was made by --method {body['method']}, not {method}; resume with "
                             f"--method {body['method']} or use another --out")
        if body["settings_hash"] != canonical_hash(self.settings):
            changed = sorted(k for k in set(self.settings) | set(body["settings"] or {})
                             if (body["settings"] or {}).get(k) != self.settings.get(k))
            raise UsageError(f"checkpoint {self.path} was made with other settings (settings differ: {', '.join(changed)}); "
                             "resume with the same options, or use another --out")
        if not isinstance(body["state"], dict):
            raise InputError(f"checkpoint {self.path}: field state is not an object; {fix}")
        return body["state"]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# ---- run record -------------------------------------------------------------------------------
def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for dist in ("acdc-lite", "torch", "transformer-lens", "transformers", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def machine() -> dict:
    facts = {"host": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    with contextlib.suppress(ImportError):
        import torch

        facts["torch_threads"] = torch.get_num_threads()
    return facts


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)


class RunRecord:
    """`run.json` of one run folder: what ran, on what, and what each start of it cost.

    `start()` begins a part (a resumed run continues the record it finds, if its settings match);
    `checkpointed(state)` (a Checkpointer's `on_save`) writes the part as "running" with the passes so far, so
    a killed run's part survives (it reads "killed" on resume); `finish(outcome, forward_passes=...,
    backward_passes=..., **facts)` closes the part and writes the file.
    """

    def __init__(self, directory: str | Path, command: str, settings: dict, name: str = RECORD):
        self.path = Path(directory) / name
        self.command, self.settings = command, settings
        self.parts: list[dict] = []
        self.facts: dict = {}
        self._started = 0.0

    def start(self, resume: bool = False, since: float | None = None) -> RunRecord:
        """Begin a part; `since`: its start as a `time.perf_counter()` reading (default: now)."""
        if resume and self.path.is_file():
            try:
                old = read_json_object(self.path, "run record")
            except InputError as e:
                log.warning("%s; starting a new record", e)
                old = {}
            if old.get("settings") == self.settings and isinstance(old.get("parts"), list):
                self.parts = [p for p in old["parts"] if isinstance(p, dict)]
                for p in self.parts:
                    if p.get("outcome") == "running":
                        p["outcome"] = "killed (cost as of its last checkpoint)"
        self._started = time.perf_counter() if since is None else since
        self._part = {"started": _now(), "resumed": bool(self.parts)}
        self.passes_at_checkpoint = {"forward_passes": 0.0, "backward_passes": 0.0}
        return self

    def checkpointed(self, state: dict) -> None:
        self.passes_at_checkpoint = {k: float(state.get(k, 0.0)) for k in ("forward_passes", "backward_passes")}
        self._write("running", **self.passes_at_checkpoint)

    def finish(self, outcome: str, forward_passes: float = 0.0, backward_passes: float = 0.0, **facts) -> Path:
        self.facts.update(facts)
        return self._write(outcome, forward_passes, backward_passes)

    def _write(self, outcome: str, forward_passes: float = 0.0, backward_passes: float = 0.0) -> Path:
        part = {**self._part, "outcome": outcome, "seconds": round(time.perf_counter() - self._started, 3),
                "forward_passes": round(forward_passes, 3), "backward_passes": round(backward_passes, 3),
                "peak_memory_mb": peak_memory_mb()}
        parts = [*self.parts, part]
        total = {k: round(sum(p.get(k, 0) for p in parts), 3) for k in ("seconds", "forward_passes", "backward_passes")}
        total["peak_memory_mb"] = max(p.get("peak_memory_mb", 0) for p in parts)
        doc = {"command": self.command, "outcome": outcome, "settings": self.settings, **self.facts, "total": total,
               "parts": parts, "versions": versions(), "machine": machine()}
        write_atomic(self.path, json.dumps(doc, indent=1) + "\n")
        return self.path
