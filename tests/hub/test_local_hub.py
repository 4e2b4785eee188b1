"""The local Hub server, driven end to end by the real huggingface_hub client over HTTP."""

import http.client
from pathlib import Path

import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from local_hub import TOKEN, USER, git_blob_oid, local_hub_fixture  # noqa: F401
from safetensors.torch import load_file, save_file

REPO = f"{USER}/chain-test"
TAGS = ["chain-of-diffusion", "generation-0"]


def _model_folder(root: Path, seed: int = 0) -> Path:
    """A small folder like one generation of a chain: weights, a card, a config in a subfolder."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_file({"w": torch.randn(4, 3), "b": torch.zeros(3)}, str(root / "model.safetensors"))
    data = ModelCardData(library_name="diffusers", tags=TAGS, license="mit")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# Generation {seed}\n\nTrained on its parent's samples.\n")
    card.validate()  # POST /api/validate-yaml, sent without a token
    card.save(root / "README.md")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 1000}\n')
    return root


def _errors(err: BaseException):
    """The exception and everything it was raised from."""
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def test_create_repo_twice_private_and_tokens(local_hub):
    api = HfApi(token=TOKEN)
    url = api.create_repo(REPO, private=True)
    assert url == f"{local_hub.url}/{REPO}" and url.repo_id == REPO and url.repo_type == "model"
    assert api.create_repo(REPO, private=True, exist_ok=True) == url  # the 409 body still carries the url
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(REPO)
    assert info.value.response.status_code == 409
    # a fresh repo on the Hub holds .gitattributes in an "initial commit"
    info_ = api.repo_info(REPO)
    assert info_.private and [s.rfilename for s in info_.siblings] == [".gitattributes"]
    assert [c.title for c in api.list_repo_commits(REPO)] == ["initial commit"]
    assert set(local_hub.authorizations) == {f"Bearer {TOKEN}"}

    with pytest.raises(RepositoryNotFoundError):  # private: invisible without a token
        HfApi(token=False).repo_info(REPO)
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token="hf_wrong").repo_info(REPO)
    assert info.value.response.status_code == 401
    assert api.whoami()["name"] == USER


def test_upload_branch_download_and_card(local_hub, tmp_path):
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    folder = _model_folder(tmp_path / "gen0")
    assert local_hub.calls("POST", "/api/validate-yaml")
    assert local_hub.authorizations[local_hub.requests.index(local_hub.calls("POST", "validate-yaml")[0])] is None

    main = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="generation 0")
    assert main.oid == local_hub.repo(REPO).branches["main"]
    assert local_hub.repo(REPO).files()["model.safetensors"] == (folder / "model.safetensors").read_bytes()

    api.create_branch(REPO, branch="gen-01")
    api.create_branch(REPO, branch="gen-01", exist_ok=True)
    new_weights = _model_folder(tmp_path / "gen1", seed=1) / "model.safetensors"
    gen1 = api.create_commit(
        REPO, revision="gen-01", commit_message="generation 1", commit_description="from gen 0's samples",
        operations=[CommitOperationAdd("model.safetensors", new_weights),
                    CommitOperationAdd("samples/grid.png", b"\x89PNG not really"),
                    CommitOperationDelete("scheduler/")],
    )
    assert gen1.oid == local_hub.repo(REPO).branches["gen-01"] != main.oid
    assert gen1.commit_url == f"{local_hub.url}/{REPO}/commit/{gen1.oid}"

    first = hf_hub_download(REPO, "model.safetensors", revision="gen-01", cache_dir=tmp_path / "c1", token=TOKEN)
    assert Path(first).read_bytes() == new_weights.read_bytes()
    assert torch.equal(load_file(first)["w"], load_file(str(new_weights))["w"])
    on_main = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "c2", token=TOKEN)
    assert Path(on_main).read_bytes() == (folder / "model.safetensors").read_bytes()
    head = local_hub.calls("HEAD", "/resolve/gen-01/model.safetensors")
    assert len(head) == 1 and head[0][2] == 200

    assert sorted(api.list_repo_files(REPO)) == [
        ".gitattributes", "README.md", "model.safetensors", "scheduler/scheduler_config.json"]
    assert sorted(api.list_repo_files(REPO, revision="gen-01")) == [
        ".gitattributes", "README.md", "model.safetensors", "samples/grid.png"]
    top = {(type(e).__name__, e.path) for e in api.list_repo_tree(REPO)}
    assert ("RepoFolder", "scheduler") in top and ("RepoFile", "scheduler/scheduler_config.json") not in top
    deep = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert deep["scheduler/scheduler_config.json"].blob_id == git_blob_oid(
        (folder / "scheduler" / "scheduler_config.json").read_bytes())
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="samples", revision="gen-01")] == [
        "samples/grid.png"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="samples"))

    assert len(api.list_repo_commits(REPO)) == 2
    commits = api.list_repo_commits(REPO, revision="gen-01")
    assert [c.title for c in commits] == ["generation 1", "generation 0", "initial commit"]
    assert commits[0].commit_id == gen1.oid and "from gen 0's samples" in commits[0].message
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": main.oid, "gen-01": gen1.oid}

    card = ModelCard.load(REPO, token=TOKEN)
    assert card.data.library_name == "diffusers" and card.data.tags == TAGS
    info = api.model_info(REPO, revision="gen-01")
    assert info.sha == gen1.oid and info.card_data.tags == TAGS and info.library_name == "diffusers"

    api.delete_branch(REPO, branch="gen-01")
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "model.safetensors", revision="gen-01", cache_dir=tmp_path / "c3", token=TOKEN)


def test_unchanged_files_are_not_committed_again(local_hub, tmp_path):
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    folder = _model_folder(tmp_path / "gen0")
    first = api.upload_folder(repo_id=REPO, folder_path=folder)
    commits_before = len(local_hub.calls("POST", "/commit/"))
    again = api.upload_folder(repo_id=REPO, folder_path=folder)
    same = api.create_commit(REPO, operations=[CommitOperationAdd("README.md", folder / "README.md")],
                             commit_message="same card")
    # preupload answers each existing file's git oid; the client drops files whose oid matches and sends no
    # commit at all when nothing is left, answering with the current head instead
    assert again.oid == same.oid == first.oid
    assert len(local_hub.calls("POST", "/commit/")) == commits_before
    assert len(local_hub.repo(REPO).history()) == 2


def test_dataset_upload_and_snapshot_download(local_hub, tmp_path):
    api = HfApi(token=TOKEN)
    repo = f"{USER}/chain-samples"
    url = api.create_repo(repo, repo_type="dataset")
    assert url == f"{local_hub.url}/datasets/{repo}"
    folder = tmp_path / "samples"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.csv").write_text("file,label\n0.png,3\n")
    (folder / "data" / "0.png").write_bytes(bytes(range(256)) * 4)
    api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=folder, commit_message="samples")
    assert local_hub.repo(repo, "dataset").files()["data/0.png"] == bytes(range(256)) * 4

    out = Path(snapshot_download(repo, repo_type="dataset", cache_dir=tmp_path / "cache", token=TOKEN))
    assert (out / "data" / "train.csv").read_text() == "file,label\n0.png,3\n"
    assert (out / "data" / "0.png").read_bytes() == bytes(range(256)) * 4
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        ".gitattributes", "data/0.png", "data/train.csv"]
    with pytest.raises(RepositoryNotFoundError):  # the same id is no model
        api.repo_info(repo)


@pytest.mark.parametrize("status", [503, 500, 429])
def test_preupload_failures_are_retried(local_hub, tmp_path, status):
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    local_hub.fail(r"/preupload/", times=2, status=status)
    info = api.upload_folder(repo_id=REPO, folder_path=_model_folder(tmp_path / "gen0"))
    assert [s for _, _, s in local_hub.calls("POST", "/preupload/main$")] == [status, status, 200]
    assert len(local_hub.calls("POST", "/commit/main$")) == 1
    assert local_hub.repo(REPO).history()[0].oid == info.oid
    assert len(local_hub.repo(REPO).history()) == 2


def test_upload_folder_retries_the_commit_post(local_hub, tmp_path):
    # upload_folder (hf_xet installed: the pipelined upload) retries a failed commit POST; create_commit does
    # not (see test_the_token_never_appears_in_errors)
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    local_hub.fail(r"/commit/", times=1, status=503)
    info = api.upload_folder(repo_id=REPO, folder_path=_model_folder(tmp_path / "gen0"))
    assert [s for _, _, s in local_hub.calls("POST", "/commit/main$")] == [503, 200]
    assert [c.oid for c in local_hub.repo(REPO).history()][:1] == [info.oid]
    assert len(local_hub.repo(REPO).history()) == 2


def test_missing_file_revision_and_repo(local_hub, tmp_path):
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.safetensors", cache_dir=tmp_path / "c", token=TOKEN)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="gen-99", cache_dir=tmp_path / "c", token=TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{USER}/nope", ".gitattributes", cache_dir=tmp_path / "c", token=TOKEN)
    assert not api.file_exists(REPO, "nope.safetensors")
    assert api.file_exists(REPO, ".gitattributes")


def test_the_token_never_appears_in_errors(local_hub, tmp_path):
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    local_hub.fail(r"/preupload/", times=None, status=500)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(REPO, operations=[CommitOperationAdd("a.txt", b"a")], commit_message="a")
    failed = local_hub.calls("POST", "/preupload/")
    assert [s for _, _, s in failed] == [500] * 6  # 5 retries, then the error
    assert all(local_hub.authorizations[local_hub.requests.index(r)] == f"Bearer {TOKEN}" for r in failed)
    errors = list(_errors(info.value))

    # the commit POST itself is not retried by create_commit (a lost answer would make a duplicate commit)
    local_hub.clear_failures()
    local_hub.fail(r"/commit/", times=None, status=500)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(REPO, operations=[CommitOperationAdd("a.txt", b"a")], commit_message="a")
    assert len(local_hub.calls("POST", "/commit/")) == 1
    errors += _errors(info.value)

    local_hub.fail(r"/resolve/", times=None, status=500)
    with pytest.raises(Exception) as info:  # noqa: B017 - whatever it raises, the token must not be in it
        hf_hub_download(REPO, ".gitattributes", cache_dir=tmp_path / "c", token=TOKEN)
    errors += _errors(info.value)
    assert len(errors) >= 3
    for err in errors:
        assert TOKEN not in str(err) and TOKEN not in repr(err), err


def test_http_answers_on_one_keep_alive_connection(local_hub):
    """What the client relies on without saying so: Content-Length everywhere, quoted ETag, no Xet headers."""
    HfApi(token=TOKEN).create_repo(REPO)
    head_oid = local_hub.repo(REPO).branches["main"]
    opened = local_hub.connections_opened
    conn = http.client.HTTPConnection("127.0.0.1", local_hub.port, timeout=5)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def ask(method, path, headers=auth):
        conn.request(method, path, headers=headers)
        answer = conn.getresponse()
        return answer, answer.read()

    answer, body = ask("HEAD", f"/{REPO}/resolve/main/.gitattributes")
    assert answer.status == 200 and body == b""
    assert answer.headers["X-Repo-Commit"] == head_oid
    assert answer.headers["ETag"] == f'"{git_blob_oid(local_hub.repo(REPO).files()[".gitattributes"])}"'
    assert int(answer.headers["Content-Length"]) == len(local_hub.repo(REPO).files()[".gitattributes"])
    assert not any(name.lower().startswith("x-xet") for name in answer.headers)
    answer, _ = ask("HEAD", f"/{REPO}/resolve/main/missing.bin")
    assert (answer.status, answer.headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert answer.headers["X-Repo-Commit"] == head_oid and "Content-Length" in answer.headers
    answer, body = ask("GET", f"/{REPO}/resolve/{head_oid}/.gitattributes", {**auth, "Range": "bytes=2-"})
    assert answer.status == 206 and body == local_hub.repo(REPO).files()[".gitattributes"][2:]
    answer, body = ask("GET", f"/api/models/{REPO}/refs", {})
    assert answer.status == 200 and b"refs/heads/main" in body
    answer, body = ask("POST", "/api/repos/create", {})  # no token: refused, and the connection lives on
    assert answer.status == 401 and int(answer.headers["Content-Length"]) == len(body) > 0
    answer, _ = ask("GET", f"/api/models/{USER}/nope")
    assert (answer.status, answer.headers["X-Error-Code"]) == (404, "RepoNotFound")
    conn.close()
    assert local_hub.connections_opened == opened + 1
    assert [m for m, _, _ in local_hub.requests[1:]] == ["HEAD", "HEAD", "GET", "GET", "POST", "GET"]
