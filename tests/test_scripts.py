import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_starts(script):
    # a script named like a standard-library module (select.py, ...) would break its neighbours
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_no_script_shadows_a_module_the_others_import():
    # Python puts a script's folder first on sys.path, so scripts/select.py would replace the
    # standard library's select for subprocess, torch and every other script there, unless it
    # hands the import over to the standard library's module (it does: see its top)
    stdlib = set(sys.stdlib_module_names)
    shadowing = [s.stem for s in SCRIPTS if s.stem in stdlib]
    assert shadowing == ["select"]
    checks = "; ".join(f"assert {name}.__file__ is None or 'scripts' not in {name}.__file__" for name in shadowing)
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import subprocess, selectors, torch, accelerate; "
            f"import {', '.join(shadowing)}; {checks}; subprocess.run(['true'], check=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
