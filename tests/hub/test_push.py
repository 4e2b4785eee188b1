"""Chains on the Hub (issue 13): the push stage and scripts/push.py, through the real chain and the real
huggingface_hub client, against the local Hub (tests/hub/local_hub.py)."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import SMOKE, call_main, cli, load_script
from local_hub import TOKEN, USER, HubError, local_hub_fixture  # noqa: F401
from PIL import Image

REPO = f"{USER}/digits-chain"
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def template(finished_run) -> Path:
    """The test suite's shared finished chain (tests/conftest.py: 2 generations, full finetune, no Hub). Hub
    settings are not part of a run's fingerprint, so a copy of it re-run with hub.repo_id gains only the
    push stages."""
    return finished_run


def _copy(template: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(template, run, ignore=shutil.ignore_patterns(".lock"))
    return run


def _chain(run: Path, *overrides: str):
    return cli("--config", str(run / "config.yaml"), f"output_dir={run}", f"hub.repo_id={REPO}", *overrides)


def _push_script(*args):
    return call_main(load_script("push").main, *args)


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def _assert_token_nowhere(run: Path, *outputs) -> None:
    for path in run.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for proc in outputs:
        assert TOKEN not in proc.stdout + proc.stderr


def test_each_generation_is_a_commit_and_a_branch_with_its_lineage(local_hub, template, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard, hf_hub_download

    from chain_of_diffusion import hub
    from chain_of_diffusion.config import load_config
    from chain_of_diffusion.runs import RunDir

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = _copy(template, tmp_path)
    proc = _chain(run)
    assert proc.returncode == 0, proc.stderr
    repo = local_hub.repo(REPO)
    assert repo.private
    titles = [c.title for c in repo.history()]
    assert [t.split(":")[0] for t in titles] == ["gen 01", "gen 00", "initial commit"]
    metrics = [json.loads((run / f"gen_{g:02d}" / "metrics.json").read_text()) for g in (0, 1)]
    assert f"fd_classifier {metrics[1]['fd_classifier']:.4g}" in titles[0]  # the headline metrics
    assert repo.branches["gen-00"] == repo.history()[1].oid and repo.branches["gen-01"] == repo.history()[0].oid
    files = repo.files()
    for g in (0, 1):
        for name in (UNET, "text_encoder/model.safetensors", "tokenizer/tokenizer.json",
                     "scheduler/scheduler_config.json", "grid.png", "metrics.json", "config.yaml"):
            assert f"gen_{g:02d}/{name}" in files, name
    assert files[UNET] == (run / "gen_01" / "model" / UNET).read_bytes()  # the root of main: the newest
    assert "curves/fd_classifier.png" in files and "gen_00/push" not in " ".join(files)

    card = ModelCard.load(REPO, token=TOKEN)
    chain = card.data.chain
    cfg = load_config([run / "config.yaml"])
    assert chain["id"] == hub.chain_id(RunDir(run), cfg) and chain["seed"] == 0 and chain["train_mode"] == "full"
    assert [(e["generation"], e["trained_on"], e["revision"]) for e in chain["lineage"]] == [
        (0, "real", "gen-00"), (1, "synthetic from generation 0", "gen-01")]
    assert chain["lineage"][1]["metrics"]["fd_classifier"] == pytest.approx(metrics[1]["fd_classifier"])
    assert {"model-collapse", "chain-of-diffusion", "text-to-image"} <= set(card.data.tags)
    assert card.data.library_name == "diffusers" and "| 1 | synthetic from generation 0 | 0 |" in card.text
    assert 'load_model(snapshot_download("local-user/digits-chain", revision="gen-01", allow_patterns=' in card.text

    fresh = tmp_path / "fresh_cache"
    for g in (0, 1):  # each branch holds its generation at the root, and all of them under gen_XX/
        local = (run / f"gen_{g:02d}" / "model" / UNET).read_bytes()
        assert Path(hf_hub_download(REPO, UNET, revision=f"gen-{g:02d}", cache_dir=fresh)).read_bytes() == local
        assert Path(hf_hub_download(REPO, f"gen_{g:02d}/{UNET}", cache_dir=fresh)).read_bytes() == local
        assert json.loads((run / f"gen_{g:02d}" / "push" / "push.json").read_text())["branch"] == f"gen-{g:02d}"
    assert "pending" not in _state(run)
    # the card's two lines load generation 0 as the chain saved it
    from huggingface_hub import snapshot_download

    from chain_of_diffusion.models.build import load_model

    ours = load_model(run / "gen_00" / "model").unet.state_dict()
    theirs = load_model(snapshot_download(REPO, revision="gen-00", allow_patterns=hub.MODEL_PATTERNS,
                                          cache_dir=fresh)).unet.state_dict()
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)

    # pushing again changes nothing: no commit, from the chain, the script or the function
    commits = len(repo.history())
    again = _chain(run)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    script = _push_script(run)
    assert script.returncode == 0 and "nothing pending" in script.stdout
    result = hub.push_generation(RunDir(run), 1, cfg, hub.make_api())
    assert not result["new_commit"] and result["commit"] == repo.branches["main"]
    assert len(repo.history()) == commits
    _assert_token_nowhere(run, proc, again, script)


def test_a_failing_hub_leaves_pushes_pending_and_the_chain_goes_on(local_hub, template, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    local_hub.fail(r"/commit/", times=None, status=500)
    run = _copy(template, tmp_path)
    shutil.rmtree(run / "gen_01" / "selected")  # a stage of generation 1 left to run after gen 0's push
    proc = _chain(run)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.index("[gen 1/1] select ...") > lines.index("[gen 0/1] push ...")  # the chain went on
    pending = [line for line in proc.stdout.splitlines() if "push pending" in line]
    assert [line.split(" pending")[0] for line in pending] == ["[gen 0/1] push", "[gen 0/1] push", "[gen 1/1] push"]
    assert "HfHubHTTPError (500)" in pending[0] and pending[2].endswith("pending: waits for generation 0")
    # one failed commit per push stage: gen 1's stage tried gen 0 again, and did not try gen 1
    assert len(local_hub.calls("POST", "/commit/")) == 2
    assert set(_state(run)["pending"]) == {"0", "1"} and not (run / "gen_00" / "push").exists()
    dry = cli("--config", str(run / "config.yaml"), "--dry-run")
    assert [line.split() for line in dry.stdout.splitlines() if line.startswith("#   gen") and "push" in line] == [
        ["#", "gen", "0", "push", "to", "run"], ["#", "gen", "1", "push", "to", "run"]]

    still = _push_script(run)  # the Hub still fails: one line, exit 1
    assert still.returncode == 1 and still.stdout.count("pending") == 1
    local_hub.clear_failures()
    script = _push_script(run)
    assert script.returncode == 0, script.stderr
    assert [line.split(":")[0] for line in script.stdout.splitlines()] == ["gen 0", "gen 1"]
    assert [c.title.split(":")[0] for c in local_hub.repo(REPO).history()] == ["gen 01", "gen 00", "initial commit"]
    assert "pending" not in _state(run) and (run / "gen_01" / "push" / "push.json").is_file()
    assert _push_script(run).returncode == 0
    _assert_token_nowhere(run, proc, still, script)


def test_retried_requests_and_a_lost_commit_answer_make_no_duplicate(local_hub, template, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    commit = local_hub._commit
    lost = []

    def commit_then_lose_the_answer(*args):
        answer = commit(*args)
        if not lost:
            lost.append(answer)
            raise HubError(502, "Bad Gateway")
        return answer

    monkeypatch.setattr(local_hub, "_commit", commit_then_lose_the_answer)
    local_hub.fail(r"/preupload/", times=2, status=503)  # the client retries these itself
    run = _copy(template, tmp_path)
    proc = _chain(run)
    assert proc.returncode == 0 and "[gen 0/1] push pending" in proc.stdout and lost
    assert [status for _, _, status in local_hub.calls("POST", "/preupload/")][:3] == [503, 503, 200]
    repo = local_hub.repo(REPO)
    # gen 1's stage pushed gen 0 again: it was there already, so no second commit; its branch was made
    assert [c.title.split(":")[0] for c in repo.history()] == ["gen 01", "gen 00", "initial commit"]
    assert repo.branches["gen-00"] == repo.history()[1].oid
    assert "pending" not in _state(run)


def test_offline_runs_and_leaves_every_push_pending(local_hub, template, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # and no token: offline needs none
    run = _copy(template, tmp_path)
    proc = _chain(run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("HF_HUB_OFFLINE=1: the pushes to local-user/digits-chain are left pending")
    assert set(_state(run)["pending"]) == {"0", "1"} and not local_hub.requests
    assert _push_script(run).returncode == 2  # still offline: one line
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _push_script(run).returncode == 0 and "pending" not in _state(run)
    assert len(local_hub.repo(REPO).history()) == 3


def test_a_repo_of_another_chain_is_refused_unless_overwrite(local_hub, template, tmp_path, monkeypatch):
    from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    other = "---\nlibrary_name: diffusers\nchain:\n  id: 0123456789abcdef\n  lineage: []\n---\n# another chain\n"
    api.create_commit(REPO, [CommitOperationAdd("README.md", other.encode())], commit_message="theirs")
    run = _copy(template, tmp_path)
    proc = _chain(run)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "holds the lineage of another chain (chain id 0123456789abcdef" in proc.stderr
    assert "hub.overwrite=true" in proc.stderr and len(local_hub.repo(REPO).history()) == 2
    assert _push_script(run).returncode == 2
    proc = _chain(run, "hub.overwrite=true", "hub.branch_per_generation=false", "hub.push_samples=none")
    assert proc.returncode == 0, proc.stderr
    assert ModelCard.load(REPO, token=TOKEN).data.chain["id"] != "0123456789abcdef"
    files = local_hub.repo(REPO).files()
    assert "gen_01/metrics.json" in files and "gen_01/grid.png" not in files
    assert set(local_hub.repo(REPO).branches) == {"main"}


def test_bad_hub_input_is_one_line_before_any_work(local_hub, template, tmp_path):
    out = tmp_path / "never"
    for override, words in [("hub.repo_id=bad", "config key 'hub.repo_id': 'bad' is not a Hub repo id"),
                            ("hub.repo_id=a/b@gen-01", "is not a Hub repo id"),
                            ("hub.push_samples=every", "'hub.push_samples'"),
                            (f"hub.repo_id={REPO}", "needs a Hugging Face token")]:  # the fixture leaves no token
        proc = cli("--config", str(SMOKE), f"output_dir={out}", override)
        assert proc.returncode == 2 and words in proc.stderr, (override, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not local_hub.requests
    assert _push_script(tmp_path / "nope").returncode == 2
    no_hub = _push_script(template)
    assert no_hub.returncode == 2 and "hub.repo_id is not set" in no_hub.stderr


def test_a_pushed_generation_is_the_base_of_a_new_chain_that_says_so(local_hub, template, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard
    from safetensors.torch import load_file

    from chain_of_diffusion.models.continued import parse_ref

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _chain(_copy(template, tmp_path)).returncode == 0
    assert parse_ref(f"{REPO}@gen-01") == (REPO, 1) and parse_ref(REPO) is None
    missing = cli("--config", str(SMOKE), f"output_dir={tmp_path / 'never'}", f"model.pretrained={REPO}@gen-07",
                  "train.init=base", "--dry-run")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert f"{REPO} has no generation 7 (pushed: gen-00, gen-01)" in missing.stderr
    branch = tmp_path / "branch"
    fork = f"{USER}/digits-chain-branch"
    proc = cli("--config", str(SMOKE), f"output_dir={branch}", f"model.pretrained={REPO}@gen-01", "train.init=base",
               "generations=1", "train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "sample.steps=2",
               "data.num_train=48", "data.num_heldout=48", "metrics.classifier_steps=10", f"hub.repo_id={fork}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # generation 0 of the branch started from the pushed generation 1: the base the run records is its files
    base = json.loads((branch / "reference" / "base.json").read_text())
    assert base["pretrained"] == f"{REPO}@gen-01" and Path(base["folder"]).name == "gen_01"
    pushed = load_file(str(Path(base["folder"]) / UNET))
    original = load_file(str(template / "gen_01" / "model" / UNET))
    assert all((pushed[k] == original[k]).all() for k in original)
    card = ModelCard.load(fork, token=TOKEN)
    assert card.data.chain["continued_from"]["repo"] == REPO and card.data.chain["continued_from"]["generation"] == 1
    assert card.data.chain["continued_from"]["chain_id"] == ModelCard.load(REPO, token=TOKEN).data.chain["id"]
    assert card.data.base_model == REPO and f"continues generation 1 of the chain `{REPO}`" in card.text


def test_the_pushed_config_holds_no_local_paths(tmp_path):
    import yaml

    from chain_of_diffusion.hub_files import shareable_config

    data = tmp_path / "home" / "me" / "my_cats"
    data.mkdir(parents=True)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs" / "cats"), "seed": 0,
                                      "data": {"source": "imagefolder", "path": str(data)},
                                      "model": {"pretrained": "stable-diffusion-v1-5/stable-diffusion-v1-5"}}))
    text = shareable_config(config).decode()
    assert str(tmp_path) not in text
    shared = yaml.safe_load(text)
    assert shared["output_dir"] == "cats" and shared["data"]["path"] == "my_cats"
    assert shared["model"]["pretrained"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # a Hub id stays
    assert text.startswith("# local paths cut to their last part: output_dir, data.path")


def test_a_slow_push_is_waited_for_at_most_its_timeout_and_finishes_in_the_background(tmp_path, monkeypatch):
    # the other processes wait at the push stage's barrier: a push must not keep them there for the
    # process group's timeout (600 s on NCCL); it is left pending and ends on its own thread
    import threading
    import time

    from chain_of_diffusion import hub
    from chain_of_diffusion.config import load_config
    from chain_of_diffusion.stages import push
    from chain_of_diffusion.stages.base import StagePending

    release, finished = threading.Event(), []

    def slow_push(run, generation, cfg, api):
        release.wait(10)
        finished.append(generation)
        return {"generation": generation}

    monkeypatch.setattr(hub, "is_offline", lambda: False)
    monkeypatch.setattr(hub, "push_generation", slow_push)
    cfg = load_config([], [f"hub.repo_id={REPO}", "hub.push_timeout_s=0.3"])
    started = time.monotonic()
    with pytest.raises(StagePending, match="longer than hub.push_timeout_s=0.3 s"):
        push.push_into(None, 0, cfg, tmp_path, api=object())
    assert time.monotonic() - started < 3 and finished == []
    release.set()  # the Hub answers at last: the late push ends, and the next one waits for it first
    assert push.push_into(None, 1, cfg, tmp_path, api=object()) == {"generation": 1}
    assert finished == [0, 1] and json.loads((tmp_path / push.RECORD).read_text()) == {"generation": 1}


def test_push_samples_all_makes_a_dataset_repo_that_load_dataset_reads(local_hub, template, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = _copy(template, tmp_path)
    assert _chain(run, "hub.push_samples=all").returncode == 0
    repo = local_hub.repo(f"{REPO}-samples", repo_type="dataset")
    records = [json.loads(line) for line in (run / "gen_01" / "samples" / "metadata.jsonl").read_text().splitlines()]
    files = repo.files()
    assert all(f"gen_01/{r['file_name']}" in files for r in records) and "gen_01/metadata.jsonl" in files
    assert len(repo.history()) == 3  # one commit per generation (and the initial one)
    # a user elsewhere: datasets reads a generation with its captions and provenance
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", huggingface_hub.constants.ENDPOINT)
    ds = datasets.load_dataset(f"{REPO}-samples", "gen_01", split="train", token=TOKEN,
                               cache_dir=str(tmp_path / "datasets"))
    assert len(ds) == len(records) and ds[0]["text"] == records[0]["text"] and "seed" in ds.column_names
    assert ds[0]["image"].size == Image.open(run / "gen_01" / "samples" / records[0]["file_name"]).size
    assert _chain(run, "hub.push_samples=all").returncode == 0
    assert len(repo.history()) == 3  # pushed again unchanged: no new commit
