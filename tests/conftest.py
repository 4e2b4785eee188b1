import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# smaller than smoke.yaml: every end-to-end test pays for it several times
TINY_OVERRIDES = [
    "data.num_train=48", "data.num_heldout=48", "train.steps=12", "train.batch_size=16",
    "train.micro_batch_size=8", "train.checkpoint_every=4", "train.log_every=4", "train.lr_warmup_steps=2",
    "sample.steps=4", "sample.batch_size=16", "metrics.classifier_steps=20",
]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run the real entry point, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chain.py"), *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One finished 2-generation chain, shared by the tests that only read a run directory."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli("--config", str(SMOKE), f"output_dir={out}", *TINY_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def make_tiny_sd_pipeline(folder: Path, resolution: int = 32) -> Path:
    """A Stable Diffusion pipeline folder of the tiny_sd layout (random weights), as diffusers saves one."""
    from chain_of_diffusion.config import ModelConfig
    from chain_of_diffusion.models.build import build_model
    from chain_of_diffusion.models.pretrained import save_pipeline

    return save_pipeline(build_model(ModelConfig(arch="tiny_sd"), resolution, seed=0), folder)


@pytest.fixture(scope="session")
def tiny_sd_pipeline(tmp_path_factory) -> Path:
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny_sd")
