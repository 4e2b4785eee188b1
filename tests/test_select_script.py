import subprocess
import sys

from conftest import ROOT, call_main, load_script
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
    """The script as a real process."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "select.py"), *args], capture_output=True, text=True)


def _in_process(*args):
    """``main(args)`` in this process (for bad input, which stops before any work)."""
    return call_main(load_script("select").main, *args)


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
    proc = _in_process("--in", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--budget", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"select.py: error: --in {tmp_path / 'missing'}: folder does not exist"
    _image_set(tmp_path / "in")
    proc = _in_process("--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--budget", "2", "--method", "magic")
    assert proc.returncode == 2 and "magic" in proc.stderr


def test_select_script_reads_txt_captions_and_csv_as_the_chain_does(tmp_path):
    # the same twelve squares as _image_set, captioned by .txt sidecars (no metadata.jsonl) ...
    _image_set(tmp_path / "txt")
    (tmp_path / "txt" / "metadata.jsonl").unlink()
    for i in range(12):
        (tmp_path / "txt" / f"{i:03d}.txt").write_text(f"square {i}\n")
    # ... and listed in a CSV one folder up (paths relative to the CSV), with the caption in another column
    rows = ["path,caption"] + [f"txt/{i:03d}.png,csv square {i}" for i in range(12)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    runs = {"txt": [], "csv": ["--set", "data.image_column=path", "--set", "data.caption_column=caption"]}
    for name, extra in runs.items():
        src = tmp_path / ("txt" if name == "txt" else "list.csv")
        proc = _in_process("--in", str(src), "--out", str(tmp_path / f"out_{name}"), "--budget", "4", *extra)
        assert proc.returncode == 0, proc.stderr
        kept = read_metadata(tmp_path / f"out_{name}")
        assert len(kept) == 4 and sorted(r["score"] for r in kept) == [0, 1, 2, 3]
        assert all((tmp_path / f"out_{name}" / r["file_name"]).is_file() for r in kept)
        prefix = "csv square" if name == "csv" else "square"
        assert all(r["text"] == f"{prefix} {int(r['file_name'][:3])}" for r in kept)
        assert {"000.png", "001.png"} & {r["file_name"] for r in kept}  # the bright cluster, as from metadata
    # the chain's own refusal for a CSV without the image column names the column and its key
    proc = _in_process("--in", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out"), "--budget", "2")
    assert proc.returncode == 2 and "data.image_column" in proc.stderr and "Traceback" not in proc.stderr


def test_select_script_refuses_a_budget_above_the_pool_and_spaces_without_weights(tmp_path):
    _image_set(tmp_path / "in")
    proc = _in_process("--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--budget", "13")
    assert proc.returncode == 2 and "--budget 13" in proc.stderr and "12 images" in proc.stderr
    proc = _in_process("--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--budget", "2",
                "--features", "inception", "--set", f"metrics.inception_weights={tmp_path / 'none.pth'}")
    assert proc.returncode == 2 and "none.pth" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _in_process("--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--budget", "2", "--features", "sift")
    assert proc.returncode == 2 and "pixels" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_select_py_does_not_shadow_the_standard_library_for_sibling_scripts():
    # a script in scripts/ has that folder first on sys.path; `import subprocess` imports `select`
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import subprocess, select; "
            "print(hasattr(select, 'poll'), subprocess.run(['true']).returncode)")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "scripts")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "0"]
