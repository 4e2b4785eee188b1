"""Launches of several processes that go wrong: a process that dies or hangs must end the launch within
train.process_timeout_s, and the same command then resumes to the uninterrupted run's metrics."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    ACCELERATE_CONFIGS,
    FORCE_FSDP_ON_CPU,
    LAUNCH_ENV,
    ROOT,
    SHARED_ARGS,
    accelerate_command,
    free_port,
)

# a process of the launch that stops itself right after the call of ``hook`` ("module:function") that makes
# ``target`` exist (need=0) or hold ``need`` PNGs: rank ``victim`` only, with SIGKILL (it died) or SIGSTOP (it
# hangs). The check runs inside the hooked call, not in a watching thread: a thread that a loaded machine
# schedules late saw the stage finish first and killed the process only after the stage was committed.
STOP_ONE_RANK = r"""
import importlib, os, pathlib, signal, sys
victim, hook, target, need, how = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def stopping(function):
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        count = len(list(target.glob("*.png"))) if target.is_dir() else 0
        if (need == 0 and target.exists()) or (need and count >= need):
            os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        return result
    return call

if int(os.environ.get("RANK", "0")) == victim:
    module, name = hook.split(":")
    module = importlib.import_module(module)
    setattr(module, name, stopping(getattr(module, name)))
from chain_of_diffusion.cli import main
sys.exit(main(sys.argv[6:]))
"""

# where a stop happens: (the hooked function, the path it waits for, how many PNGs it must hold)
STOP_POINTS = {
    "inside-generate": ("chain_of_diffusion.generate:save_png", "gen_00/.tmp_samples", 10),
    "inside-train": ("chain_of_diffusion.train:save_checkpoint", "gen_01/.train_checkpoints/latest", 0),
}


def accelerate_launch(machines: list[str], port: int, script: Path | None = None, args=()) -> list[str]:
    """``accelerate launch --multi_gpu`` (DDP) with the machine options ``machines``."""
    return accelerate_command(["--multi_gpu", *machines], port, script, args)


DDP = ("--multi_gpu", "--num_machines", "1")


def launch(out: Path, *, script: Path | None = None, script_args: tuple = (), timeout_s: float = 20,
           limit_s: float = 600, launcher=DDP, chain_args=SHARED_ARGS) -> tuple[subprocess.CompletedProcess, float]:
    """``accelerate launch`` (``launcher``: its options) of 2 CPU processes of a chain (the shared run's
    unless ``chain_args``) into ``out``: (result, seconds)."""
    cmd = accelerate_command(list(launcher), free_port(), script,
                             [*script_args, *chain_args, f"output_dir={out}", f"train.process_timeout_s={timeout_s}"])
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s, cwd=ROOT, env=LAUNCH_ENV)
    return proc, time.monotonic() - start


def stop_one_rank(tmp_path: Path, out: Path, point: str, how: str, timeout_s: float, victim: int = 1,
                  prelude: str = "", **launch_options):
    """A launch in which process ``victim`` stops itself at ``point`` (no process with victim=-1); ``prelude``:
    code the script runs first (FORCE_FSDP_ON_CPU)."""
    script = tmp_path / "stop_one_rank.py"
    script.write_text(prelude + STOP_ONE_RANK)
    hook, rel, need = STOP_POINTS[point]
    return launch(out, script=script, script_args=(victim, hook, out / rel, need, how), timeout_s=timeout_s,
                  **launch_options)


def check_resumes_to_the_uninterrupted_run(out: Path, finished_run: Path) -> None:
    again, _ = launch(out)
    assert again.returncode == 0, again.stderr[-8000:]
    assert "resuming" in again.stdout
    assert (out / "metrics.jsonl").read_text() == (finished_run / "metrics.jsonl").read_text()
    for g in (0, 1):
        names = sorted(p.name for p in (finished_run / f"gen_{g:02d}" / "samples").iterdir())
        assert names == sorted(p.name for p in (out / f"gen_{g:02d}" / "samples").iterdir())


def test_a_process_killed_while_generating_ends_the_launch_and_the_run_resumes(finished_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc, seconds = stop_one_rank(tmp_path, out, "inside-generate", "kill", timeout_s=20)
    printed = proc.stdout + proc.stderr
    assert proc.returncode != 0, printed[-3000:]
    assert seconds < 120, seconds  # start-up, the chain up to the kill, then at most the timeout and torchrun's grace
    assert "rank      : 1" in printed and "Signal 9 (SIGKILL)" in printed, printed[-3000:]  # the launcher names it
    assert not (out / "gen_00" / "samples").exists()
    check_resumes_to_the_uninterrupted_run(out, finished_run)


@pytest.mark.slow  # the default tier kills a process while generating (above)
def test_a_process_killed_while_training_ends_the_launch_and_the_run_resumes(finished_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc, seconds = stop_one_rank(tmp_path, out, "inside-train", "kill", timeout_s=20)
    assert proc.returncode != 0
    assert seconds < 120, seconds
    assert "rank      : 1" in proc.stdout + proc.stderr
    assert not (out / "gen_01" / "model").exists()
    check_resumes_to_the_uninterrupted_run(out, finished_run)


@pytest.mark.slow
def test_a_hung_process_stops_the_others_after_the_timeout(finished_run: Path, tmp_path: Path):
    """A process that stops answering (SIGSTOP) is what a collective waits on: the other gives up after
    train.process_timeout_s with one line saying so, not after torch's 30 minutes."""
    out = tmp_path / "run"
    proc, seconds = stop_one_rank(tmp_path, out, "inside-generate", "stop", timeout_s=15)
    assert proc.returncode != 0
    assert seconds < 15 + 120, seconds
    assert "lost the others at a collective" in proc.stderr and "train.process_timeout_s=15" in proc.stderr, \
        proc.stderr[-3000:]
    check_resumes_to_the_uninterrupted_run(out, finished_run)


def two_nodes(out: str, args=((), ()), cwd=(ROOT, ROOT), limit_s: float = 600) -> list[subprocess.CompletedProcess]:
    """Two "machines" of one CPU process each, as two launches on this one (127.0.0.1, gloo): node r
    gets the shared run's arguments, then ``args[r]``, and runs in ``cwd[r]``."""
    port, procs = free_port(), []
    for rank in (0, 1):
        cmd = accelerate_launch(["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"],
                                port, args=[*SHARED_ARGS, f"output_dir={out}", *args[rank]])
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd[rank],
                                      env=LAUNCH_ENV))
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=limit_s)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def test_two_machines_match_one_process(finished_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    nodes = two_nodes(str(out))
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    assert json.loads((out / "env.json").read_text())["num_processes"] == 2
    assert (out / "metrics.jsonl").read_text() == (finished_run / "metrics.jsonl").read_text()
    for g in (0, 1):
        for png in sorted((finished_run / f"gen_{g:02d}" / "samples").glob("*.png")):
            assert png.read_bytes() == (out / f"gen_{g:02d}" / "samples" / png.name).read_bytes(), png
    assert not (out / ".processes").exists()
    # where the processes waited: per stage and process, the seconds worked and then waited for the others
    timing = json.loads((out / "gen_01" / "timing.json").read_text())
    assert set(timing) == {"mix", "train", "generate", "select", "evaluate"}
    for stage in timing.values():
        assert len(stage["work_s"]) == len(stage["wait_s"]) == 2 and 0 <= stage["idle_share"] <= 1
    assert timing["mix"]["idle_share"] > 0.3  # the main process mixes alone: the other one waits
    assert timing["mix"]["work_s"][0] >= timing["mix"]["work_s"][1]
    assert "processes idle (waiting for the others)" in (out / "report.html").read_text()


def test_a_machine_with_another_config_stops_every_process(tmp_path: Path):
    out = tmp_path / "run"
    nodes = two_nodes(str(out), args=((), ("train.lr=0.5",)))
    for node in nodes:
        assert node.returncode != 0
    said = nodes[0].stderr + nodes[1].stderr
    assert "process 1 (on " in said and "runs another config or other packages than the main process: train.lr" in said
    assert not (out / "gen_00").exists()


def test_a_run_directory_the_machines_do_not_share_is_refused(tmp_path: Path):
    """The same relative output_dir, launched from two working directories: two folders, as on two machines
    without a shared file system."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nodes = two_nodes("run", cwd=(tmp_path / "a", tmp_path / "b"))
    for node in nodes:
        assert node.returncode != 0
    assert "is not on a file system every machine shares" in nodes[0].stderr + nodes[1].stderr
    assert not (tmp_path / "a" / "run" / "gen_00").exists()


def test_process_timeout_is_not_part_of_a_runs_identity_and_outlasts_a_push():
    from chain_of_diffusion.config import ConfigError, fingerprint_dict, load_config

    assert fingerprint_dict(load_config([], ["train.process_timeout_s=60"])) == fingerprint_dict(load_config([], []))
    with pytest.raises(ConfigError, match=r"'train.process_timeout_s': 60 s, but .* hub.push_timeout_s=300"):
        load_config([], ["train.process_timeout_s=60", "hub.repo_id=me/chain"])


def test_the_package_takes_devices_only_from_accelerate():
    """No torch.cuda.is_available() or .cuda() in the package: a process picking its own device puts every
    process of a multi-GPU launch on GPU 0."""
    offending = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "chain_of_diffusion").rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "cuda.is_available(" in line or ".cuda()" in line or "cuda.current_device(" in line]
    assert not offending, offending


def test_env_json_names_no_gpu_on_a_cpu_run(finished_run: Path):
    assert json.loads((finished_run / "env.json").read_text())["cuda"] is None


@pytest.mark.slow  # the default tier runs every stage with 2 processes
def test_more_processes_than_images_finish(tmp_path: Path):
    """3 processes, 2 training images (so 2 samples to render and score): the process without an image
    waits at each stage's end instead of hanging, and the progress line stops at its total."""
    out = tmp_path / "run"
    cmd = accelerate_command(list(DDP), free_port(), args=[
        *SHARED_ARGS, f"output_dir={out}", "generations=1", "data.num_train=2", "data.num_heldout=8",
        "train.batch_size=3", "train.micro_batch_size=1", "train.steps=2", "sample.steps=2",
        "metrics.features=pixels", "metrics.names=[memorization]"], processes=3)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=LAUNCH_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((out / "gen_00" / "samples").glob("*.png"))) == 2
    assert "generate: 100% (2/2)" in proc.stderr
    assert len(json.loads((out / "gen_00" / "timing.json").read_text())["generate"]["work_s"]) == 3


@pytest.mark.slow  # the default tier runs an FSDP chain (test_lora_chain.py)
def test_an_fsdp_run_killed_while_training_resumes_to_the_same_adapters(tiny_sd_pipeline, tmp_path: Path):
    """An FSDP chain's checkpoint (its own: the adapter gathered whole, the optimizer's full state dict)
    resumes a run whose process died to the uninterrupted run's adapters, bit for bit; the DDP chain's
    adapters agree within 1e-4 (measured: 1e-6)."""
    fsdp = {"prelude": FORCE_FSDP_ON_CPU, "launcher": ("--config_file", str(ACCELERATE_CONFIGS / "fsdp.yaml")),
            "chain_args": ["--config", str(ROOT / "configs" / "tiny_sd_lora.yaml"),
                           f"model.pretrained={tiny_sd_pipeline}", "data.num_train=24", "data.num_heldout=24",
                           "train.steps=8", "train.checkpoint_every=4", "sample.steps=4",
                           "train.micro_batch_size=4",  # 2 micro-batches per process: FSDP2's no_sync path
                           "metrics.features=pixels", "metrics.names=[memorization]"]}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc, _ = stop_one_rank(tmp_path, whole, "inside-train", "kill", timeout_s=20, victim=-1, **fsdp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = stop_one_rank(tmp_path, killed, "inside-train", "kill", timeout_s=20, **fsdp)
    assert proc.returncode != 0 and (killed / "gen_01" / ".train_checkpoints" / "latest").is_dir()
    assert not (killed / "gen_01" / "model").exists()
    proc, _ = stop_one_rank(tmp_path, killed, "inside-train", "kill", timeout_s=20, victim=-1, **fsdp)
    assert proc.returncode == 0 and "resuming" in proc.stdout, proc.stderr[-3000:]
    assert "resumed from" in (killed / "log.txt").read_text()
    from safetensors import safe_open

    for g in (0, 1):  # not the bytes: safetensors writes its metadata's keys in a per-process hash order
        name = f"gen_{g:02d}/model/pytorch_lora_weights.safetensors"
        with safe_open(str(killed / name), "pt") as ours, safe_open(str(whole / name), "pt") as theirs:
            assert ours.metadata() == theirs.metadata() and sorted(ours.keys()) == sorted(theirs.keys())
            for key in theirs.keys():
                assert torch.equal(ours.get_tensor(key), theirs.get_tensor(key)), (name, key)
    assert (killed / "metrics.jsonl").read_text() == (whole / "metrics.jsonl").read_text()
    # and the DDP chain of the same launch size has the same adapters, up to the order of the gradient sums
    ddp = tmp_path / "ddp"
    proc, _ = launch(ddp, chain_args=fsdp["chain_args"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for g in (0, 1):
        name = f"gen_{g:02d}/model/pytorch_lora_weights.safetensors"
        with safe_open(str(ddp / name), "pt") as theirs, safe_open(str(whole / name), "pt") as ours:
            for key in theirs.keys():
                torch.testing.assert_close(ours.get_tensor(key), theirs.get_tensor(key), atol=1e-4, rtol=1e-3)
