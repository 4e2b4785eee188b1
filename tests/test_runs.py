import json
import os

import pytest

from chain_of_diffusion.runs import RunDir, RunDirError, atomic_write_json, read_json


def test_atomic_json_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a" / "state.json", {"x": 1})
    assert read_json(tmp_path / "a" / "state.json") == {"x": 1}
    assert read_json(tmp_path / "missing.json", default=5) == 5
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["state.json"]  # no temp file left


def test_commit_stage_renames_and_records(tmp_path):
    run = RunDir(tmp_path)
    state = run.load_state()
    tmp = run.fresh_tmp(0, "samples")
    (tmp / "000000.png").write_bytes(b"x")
    assert not run.is_done(0, "samples")
    run.commit_stage(state, 0, "samples", tmp, name="generate")
    assert run.is_done(0, "samples")
    assert (run.gen(0) / "samples" / "000000.png").read_bytes() == b"x"
    assert not tmp.exists()
    assert json.loads(run.state_path.read_text())["done"] == {"0": ["generate"]}


def test_commit_never_overwrites_a_finished_stage(tmp_path):
    run = RunDir(tmp_path)
    state = run.load_state()
    first = run.fresh_tmp(1, "model")
    (first / "w").write_text("first")
    run.commit_stage(state, 1, "model", first, name="train")
    second = run.fresh_tmp(1, "model")
    (second / "w").write_text("second")
    run.commit_stage(state, 1, "model", second, name="train")
    assert (run.gen(1) / "model" / "w").read_text() == "first"


def test_fresh_tmp_clears_a_killed_attempt(tmp_path):
    run = RunDir(tmp_path)
    tmp = run.fresh_tmp(0, "train_set")
    (tmp / "half").write_text("partial")
    assert list(run.fresh_tmp(0, "train_set").iterdir()) == []


def test_lock_refuses_a_second_holder(tmp_path):
    first, second = RunDir(tmp_path), RunDir(tmp_path)
    first.acquire_lock()
    with pytest.raises(RunDirError, match="in use by another running chain"):
        second.acquire_lock()
    first.release_lock()
    second.acquire_lock()  # free again once released
    second.release_lock()


def test_lock_held_by_another_process_is_refused_until_it_dies(tmp_path):
    import subprocess
    import sys

    # the other chain, killed without a chance to clean up: the operating system frees its lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from chain_of_diffusion.runs import RunDir; "
         "run = RunDir(sys.argv[1]); run.acquire_lock(); print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by another running chain \\(pid {holder.pid}\\)"):
            RunDir(tmp_path).acquire_lock()
    finally:
        holder.kill()  # SIGKILL on Unix
        holder.wait()
    run = RunDir(tmp_path)
    run.acquire_lock()
    assert (tmp_path / ".lock").read_text() == f"pid {os.getpid()}\n"
    run.release_lock()
