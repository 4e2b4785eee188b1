import subprocess
import sys

from conftest import ROOT
from PIL import Image

from chain_of_diffusion.data.imageset import read_metadata, write_metadata


def _image_set(folder, n=12):
    folder.mkdir()
    records = []
    for i in range(n):
        # two tight clusters: 10 near-black images and 2 bright ones
        value = 250 - i if i < 2 else i
        Image.new("RGB", (8 + i % 3, 8), (value, value, value)).save(folder / f"{i:03d}.png")
        records.append({"file_name": f"{i:03d}.png", "text": f"square {i}"})
    write_metadata(folder, records)


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "select_images.py"), *args], capture_output=True, text=True)


def test_select_script_curates_an_image_set(tmp_path):
    _image_set(tmp_path / "in")
    proc = _run("--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "greedy_entropy",
                "--budget", "4")
    assert proc.returncode == 0, proc.stderr
    kept = read_metadata(tmp_path / "out")
    assert len(kept) == 4 and sorted(r["score"] for r in kept) == [0, 1, 2, 3]
    assert all((tmp_path / "out" / r["file_name"]).is_file() for r in kept)
    # farthest-point selection reaches the small bright cluster within the first picks
    assert {"000.png", "001.png"} & {r["file_name"] for r in kept}


def test_select_script_bad_input(tmp_path):
    proc = _run("--in", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--budget", "2")
    assert proc.returncode == 2 and "metadata.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    _image_set(tmp_path / "in")
    proc = _run("--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--budget", "2", "--method", "magic")
    assert proc.returncode == 2 and "magic" in proc.stderr
