"""The run directory: layout, atomic writes, ``state.json`` and the lock against a second writer.

A stage writes into ``gen_XX/.tmp_<name>/`` and :meth:`RunDir.commit_stage` renames it into
place, then records it in ``state.json`` (written atomically). A crash at any moment therefore
leaves either the old state or the new one, never half a stage.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from chain_of_diffusion.errors import RunDirError


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask, read once. Linux shows it in /proc (no change at all); elsewhere it can
    only be read by setting it, which this does once, on first use, and sets back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def usual_permissions(path: str | Path) -> None:
    """Give ``path`` (a file, or every file under a folder) the mode a plain ``open`` would.

    Writers that make their file as a private temp file and rename it (safetensors does, with 0600)
    would otherwise leave files of the run directory that only their owner can read."""
    path = Path(path)
    files = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    mode = file_mode()
    for f in files:
        if stat.S_IMODE(f.stat().st_mode) != mode:
            os.chmod(f, mode)


@contextlib.contextmanager
def atomic_replace(path: str | Path) -> Iterator[Path]:
    """Write a file atomically: yields a temporary path beside ``path`` (same suffix, so writers
    that pick a format by suffix still work); when the block ends without error the file is
    flushed to disk, given the usual permissions (the umask's, whatever mode the writer chose) and
    renamed over ``path``, otherwise removed. Readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_replace(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2, sort_keys: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    with open(path) as f:
        return json.load(f)


def check_output_dir(root: str | Path) -> bool:
    """Whether ``output_dir`` can be written: True for a writable folder or one that can be made.

    False for an existing folder that cannot be written (a read-only finished run can still be
    read). Raises :class:`RunDirError` naming output_dir where it can never be a run directory:
    it is a file, or a folder above it is a file or cannot be written.
    """
    root = Path(root)
    try:
        exists = root.exists()
    except OSError as err:  # a folder above it cannot be searched
        raise RunDirError(f"output_dir {root}: cannot be read ({err.strerror})") from None
    if exists:
        if not root.is_dir():
            raise RunDirError(f"output_dir {root}: exists and is not a folder; choose another output_dir")
        return os.access(root, os.W_OK | os.X_OK)
    parent = root.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"output_dir {root}: cannot be made, {parent} is a file; choose another output_dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"output_dir {root}: cannot be made, no permission to write in {parent}; "
                          "choose another output_dir")
    return True


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


class RunDir:
    """Paths and bookkeeping of one chain's output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_file = None

    # ---- layout -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def reference(self) -> Path:
        return self.root / "reference"

    @property
    def real(self) -> Path:
        return self.root / "real"

    @property
    def log_path(self) -> Path:
        return self.root / "log.txt"

    def gen(self, generation: int) -> Path:
        return self.root / f"gen_{generation:02d}"

    def stage_path(self, generation: Optional[int], folder: str) -> Path:
        """``gen_XX/<folder>``, or ``<root>/<folder>`` for ``generation=None`` (the stages run once
        per chain). Each stage names its folder (:mod:`chain_of_diffusion.stages`)."""
        if generation is None:
            return self.root / folder
        return self.gen(generation) / folder

    def tmp_stage_path(self, generation: Optional[int], folder: str) -> Path:
        final = self.stage_path(generation, folder)
        return final.with_name(f".tmp_{final.name}")

    # ---- lock ---------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Hold an exclusive lock on ``<root>/.lock`` for the life of this process (non-blocking:
        a second chain on the same directory is refused at once).

        ``filelock`` locks with ``flock`` on Unix and ``LockFileEx`` on Windows: both are released
        by the operating system when the process dies, ``kill -9`` included, so a stale lock never
        blocks a resume.
        """
        import filelock

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        holder = _read_holder(path)  # before trying: some filelock versions truncate the file when they open it
        lock = filelock.FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = _read_holder(path) or holder or "another process"
            raise RunDirError(
                f"{self.root}: output_dir is in use by another running chain ({holder}); "
                "wait for it or choose another output_dir"
            ) from None
        self._lock_file = lock
        # who holds it, for the message above; informative only (Windows may refuse a second handle)
        with contextlib.suppress(OSError), open(path, "w") as f:
            f.write(f"pid {os.getpid()}\n")

    def release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    # ---- state --------------------------------------------------------------------------
    def load_state(self) -> dict:
        return read_json(self.state_path, default={"done": {}, "real": False, "reference": False})

    def save_state(self, state: dict) -> None:
        atomic_write_json(self.state_path, state)

    def is_done(self, generation: Optional[int], folder: str) -> bool:
        # the rename into place is the commit point; state.json follows it and may lag by one
        # stage after a kill, so the folder is what decides
        return self.stage_path(generation, folder).exists()

    def fresh_tmp(self, generation: Optional[int], folder: str) -> Path:
        """An empty temporary folder for a stage (leftovers of a killed attempt removed)."""
        tmp = self.tmp_stage_path(generation, folder)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit_stage(self, state: dict, generation: Optional[int], folder: str, tmp: Optional[Path] = None,
                     *, name: Optional[str] = None) -> None:
        """Rename the stage's temp folder into place, then record the stage (``name``, default
        ``folder``) in ``state.json``."""
        tmp = tmp or self.tmp_stage_path(generation, folder)
        final = self.stage_path(generation, folder)
        stage = name or folder
        if final.exists():
            # only reachable when state.json lost the stage (killed between rename and save):
            # the folder is complete, so the old one is the same result; keep it
            shutil.rmtree(tmp)
        else:
            usual_permissions(tmp)  # the model files (safetensors writes them 0600)
            os.replace(tmp, final)
        if generation is None:
            state[stage] = True
        else:
            state["done"].setdefault(str(generation), [])
            if stage not in state["done"][str(generation)]:
                state["done"][str(generation)].append(stage)
        self.save_state(state)
