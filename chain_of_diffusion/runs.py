"""The run directory: layout, atomic writes, ``state.json`` and the lock against a second writer.

A stage writes into ``gen_XX/.tmp_<name>/`` and :meth:`RunDir.commit_stage` renames it into
place, then records it in ``state.json`` (written atomically). A crash at any moment therefore
leaves either the old state or the new one, never half a stage.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from chain_of_diffusion.errors import RunDirError

STAGES = ("mix", "train", "generate", "select", "evaluate")
# stages run once per chain, before generation 0 (generation=None below); folder = stage name
ONCE_STAGES = ("real", "reference")
# the folder each stage produces inside gen_XX/
STAGE_FOLDERS = {
    "mix": "train_set",
    "train": "model",
    "generate": "samples",
    "select": "selected",
    "evaluate": "evaluation",
}



def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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

    def stage_path(self, generation: Optional[int], stage: str) -> Path:
        """The folder a stage produces; ``generation=None`` for the once-per-chain stages."""
        if generation is None:
            return self.root / stage
        return self.gen(generation) / STAGE_FOLDERS[stage]

    def tmp_stage_path(self, generation: Optional[int], stage: str) -> Path:
        final = self.stage_path(generation, stage)
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

    def is_done(self, generation: Optional[int], stage: str) -> bool:
        # the rename into place is the commit point; state.json follows it and may lag by one
        # stage after a kill, so the folder is what decides
        return self.stage_path(generation, stage).exists()

    def fresh_tmp(self, generation: Optional[int], stage: str) -> Path:
        """An empty temporary folder for a stage (leftovers of a killed attempt removed)."""
        tmp = self.tmp_stage_path(generation, stage)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit_stage(self, state: dict, generation: Optional[int], stage: str, tmp: Optional[Path] = None) -> None:
        """Rename the stage's temp folder into place, then record the stage in ``state.json``."""
        tmp = tmp or self.tmp_stage_path(generation, stage)
        final = self.stage_path(generation, stage)
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
