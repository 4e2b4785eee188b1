import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pretrained bases (base:digits) are built into a cache of the test session, never the user's ~/.cache
os.environ["CHAIN_OF_DIFFUSION_CACHE"] = tempfile.mkdtemp(prefix="cod-test-cache-")
atexit.register(shutil.rmtree, os.environ["CHAIN_OF_DIFFUSION_CACHE"], True)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# smaller than smoke.yaml: every end-to-end test pays for it several times
TINY_OVERRIDES = [
    "data.num_train=48", "data.num_heldout=48", "train.steps=12", "train.batch_size=16",
    "train.micro_batch_size=8", "train.checkpoint_every=4", "train.log_every=4", "train.lr_warmup_steps=2",
    "sample.steps=4", "sample.batch_size=16", "metrics.classifier_steps=20",
]
# the shared run's metrics: the default three plus drift and precision/recall/density/coverage, so no
# test needs a chain of its own to see them written
SHARED_METRICS = ["metrics.names=[fd_classifier,memorization,entropy,precision,recall,density,coverage,"
                  "saturation,hf_energy,sharpness]", "metrics.prdc_features=pixels"]
# the arguments of ``finished_run``: a run compared with it byte for byte (a resumed or a 2-process run)
# uses the same ones and ONE_THREAD (bitwise equality needs equal per-process thread counts, and
# accelerate launch gives each worker 1 thread)
SHARED_ARGS = ["--config", str(SMOKE), *TINY_OVERRIDES, *SHARED_METRICS]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# the schema's defaults through the entry point (which, with no --config, runs configs/quickstart.yaml)
SCHEMA_DEFAULTS = ["--config", str(ROOT / "configs" / "scratch" / "digits.yaml"), "train.condition_drop=0.0"]


# accelerate launch of CPU processes with one thread each (as the shared run was made)
LAUNCH_ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", **ONE_THREAD}
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
# prepended to a launched script: accelerate 1.16 takes an FSDP config only on accelerators (on CPU it drops
# the plugin and runs DDP), so the script makes its CPU state FSDP's before the chain starts, as
# accelerate's own state does on GPUs; from there accelerate's real FSDP2 code runs (fully_shard over gloo)
FORCE_FSDP_ON_CPU = r"""
import accelerate.state as _state
from accelerate.utils import DistributedType as _Type
import chain_of_diffusion.launch as _launch

_launch.shards_here = lambda: True  # the chain refuses FSDP where accelerate would not shard
_made = _state.AcceleratorState.__init__

def _init(self, *args, fsdp_plugin=None, **kwargs):
    _made(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == _Type.MULTI_CPU:
        self.distributed_type = _Type.FSDP
        self.fsdp_plugin = fsdp_plugin
        _state.PartialState._shared_state["distributed_type"] = _Type.FSDP

_state.AcceleratorState.__init__ = _init
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(launcher: list[str], port: int, script: Path | None = None, args=(),
                       processes: int = 2) -> list[str]:
    """The ``accelerate launch`` command of ``processes`` processes in all (``launcher``: its other options,
    e.g. --multi_gpu or --config_file) running ``script`` (the chain's) with ``args``, on ``port``."""
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes),
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
            str(script or ROOT / "scripts" / "chain.py"), *map(str, args)]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run the real entry point, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chain.py"), *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )


def call_main(main, *args: str) -> subprocess.CompletedProcess:
    """A script's ``main(argv)`` in this process (no interpreter start-up): exit code and what it printed.

    For the cases that stop early (bad input, --help, --dry-run, nothing to do); each script keeps one
    test that starts it as a real process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:  # argparse: --help, usage errors
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def cli(*args: str) -> subprocess.CompletedProcess:
    """``scripts/chain.py ARGS`` in this process (see :func:`call_main`). accelerate's process-wide state
    is reset before and after, as a new process would have it (it refuses e.g. another mixed precision)."""
    from accelerate.state import AcceleratorState

    from chain_of_diffusion.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return call_main(main, *args)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def load_script(name: str):
    """scripts/NAME.py as a module (under another name, so scripts/select.py is not ``select``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One finished 2-generation chain (1 thread), shared by the tests that read a run directory and
    by those that compare another run with it byte for byte (resumed after kills, 2 processes)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli(*SHARED_ARGS, f"output_dir={out}", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def make_tiny_sd_pipeline(folder: Path, resolution: int = 32) -> Path:
    """A Stable Diffusion pipeline folder of the tiny_sd layout (random weights), as diffusers saves one."""
    from chain_of_diffusion.config import ModelConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.models.pretrained import save_pipeline

    return save_pipeline(build_model(ModelConfig(arch="tiny_sd"), resolution, seed=0), folder)


# the quickstart's base:digits at a toy size: seconds, not minutes (its samples are not digits yet)
TINY_BASE = ["steps=40", "batch_size=16", "lr_warmup_steps=5"]


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    """A pretrained base folder made by scripts/pretrain_base.py's code path, in the session's cache."""
    from chain_of_diffusion.bases import BASES, ensure_base, spec_with

    return ensure_base(spec_with(BASES["digits"], TINY_BASE), say=lambda _: None)


@pytest.fixture(scope="session")
def tiny_sd_pipeline(tmp_path_factory) -> Path:
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny_sd")
