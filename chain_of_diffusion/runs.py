"""The run directory: layout, atomic writes, ``state.json`` and the lock against a second writer.

A stage writes into ``gen_XX/.tmp_<name>/`` and :meth:`RunDir.commit_stage` renames it into
place, then records it in ``state.json`` (written atomically). A crash at any moment therefore
leaves either the old state or the new one, never half a stage.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from chain_of_diffusion.errors import RunDirError


@contextlib.contextmanager
def atomic_replace(path: str | Path) -> Iterator[Path]:
    """Write a file atomically: yields a temporary path beside ``path`` (same suffix, so writers
    that pick a format by suffix still work); when the block ends without error the file is
    flushed to disk and renamed over ``path``, otherwise removed. Readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
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
        """Hold an exclusive lock on ``<root>/.lock`` for the life of this process.

        ``flock`` is released by the kernel when the process dies, ``kill -9`` included, so a
        stale lock never blocks a resume.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            f.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                holder = (self.root / ".lock").read_text().strip() or "another process"
                raise RunDirError(
                    f"{self.root}: output_dir is in use by another running chain ({holder}); "
                    "wait for it or choose another output_dir"
                ) from None
            raise
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
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
            os.replace(tmp, final)
        if generation is None:
            state[stage] = True
        else:
            state["done"].setdefault(str(generation), [])
            if stage not in state["done"][str(generation)]:
                state["done"][str(generation)].append(stage)
        self.save_state(state)
