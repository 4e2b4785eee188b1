"""A local Hugging Face Hub for tests: the real ``huggingface_hub`` client talks HTTP to it, nothing is mocked.

Only what the 2.4 client calls for repos, commits, branches and downloads is served, and only regular (git)
files: preupload answers ``uploadMode: "regular"`` for every file, so content travels base64 inside the
commit and no LFS or Xet endpoint is ever needed. Repos live in memory; every commit is a full snapshot.

The ``local_hub`` fixture (defined here as ``local_hub_fixture``; a test module imports that name) starts a
server and points the client at it. It lives in this module, not in ``tests/hub/conftest.py``: the test
folders have no ``__init__.py``, so a second ``conftest`` module would shadow ``tests/conftest.py`` for every
test that does ``from conftest import ...``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

TOKEN = "hf_localtestTOKEN0123456789"
USER = "local-user"
TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIX = {"model": "", "dataset": "datasets/"}
# what huggingface.co puts in the "initial commit" of a new repo, shortened: the client never reads it, but
# tests that count files or commits see the same numbers as on the real Hub
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(content: bytes) -> str:
    # the client compares a regular file's remote oid with sha.git_hash(local bytes) to drop unchanged files,
    # so this must be git's blob hash, not a plain sha1
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def card_data(readme: bytes | None) -> dict | None:
    """The YAML front matter of a README.md, as the Hub serves it in ``cardData``."""
    if readme is None:
        return None
    text = readme.decode("utf-8", errors="replace").lstrip("\ufeff")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    if data is not None and not isinstance(data, dict):
        raise ValueError("the README.md metadata is not a YAML mapping")
    return data


@dataclass
class Commit:
    oid: str
    title: str
    description: str
    files: dict[str, bytes]  # the full snapshot: path -> content
    parent: str | None
    date: str


@dataclass
class Repo:
    repo_type: str  # "model" or "dataset"
    repo_id: str  # "namespace/name"
    private: bool
    created: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)  # oid -> commit
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head oid

    def resolve(self, revision: str) -> Commit | None:
        """A branch (also as ``refs/heads/...``) or a full commit oid; anything else is unknown."""
        branch = revision.removeprefix("refs/heads/")
        if branch in self.branches:
            return self.commits[self.branches[branch]]
        return self.commits.get(revision)

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, newest first (the order of ``list_repo_commits``)."""
        commit, out = self.resolve(revision), []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out

    def files(self, revision: str = "main") -> dict[str, bytes]:
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(f"{self.repo_id} has no revision {revision!r}")
        return dict(commit.files)


class HubError(Exception):
    """An answer with an error status; ``code`` goes to ``X-Error-Code``, which the client maps to its errors."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = extra.pop("headers", {})
        self.extra = extra  # more JSON fields (create_repo's 409 must carry "url")


@dataclass
class _Failure:
    pattern: re.Pattern
    times: int | None  # None: forever
    status: int
    method: str | None


class LocalHub:
    """The server: ``start()``/``stop()`` (or ``with``), ``.url``, ``.repos``, ``.requests``, ``.fail()``."""

    def __init__(self, token: str | None = TOKEN, user: str = USER, host: str = "127.0.0.1", port: int = 0):
        self.token, self.user, self.host, self.port = token, user, host, port
        self.repos: dict[tuple[str, str], Repo] = {}  # (repo_type, repo_id) -> Repo
        self.requests: list[tuple[str, str, int]] = []  # (method, path without query, status)
        self.authorizations: list[str | None] = []  # the Authorization header of each request, same order
        self.connections_opened = 0  # keep-alive at work: far fewer than len(self.requests)
        self.url = ""
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle and test hooks

    def start(self) -> LocalHub:
        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        # a short poll keeps stop() (one per test) from waiting out the default half second
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        # keep-alive connections hold a handler thread each, blocked on the next request: end them too
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail(self, pattern: str, times: int | None = 1, status: int = 500, method: str | None = None) -> None:
        """Answer the next ``times`` requests whose path matches ``pattern`` (re.search) with ``status``.

        ``times=None`` fails them forever. The request body is read first, so the connection stays usable.
        """
        with self._lock:
            self._failures.append(_Failure(re.compile(pattern), times, status, method))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def calls(self, method: str, pattern: str) -> list[tuple[str, str, int]]:
        """The logged requests with this method whose path matches ``pattern``."""
        return [r for r in self.requests if r[0] == method and re.search(pattern, r[1])]

    def _injected_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for failure in self._failures:
                if (failure.method in (None, method)) and failure.pattern.search(path):
                    if failure.times is not None:
                        failure.times -= 1
                        if failure.times <= 0:
                            self._failures.remove(failure)
                    return failure.status
        return None

    # ------------------------------------------------------------------ routing

    def handle(self, method: str, raw_path: str, query: dict, body: bytes, auth: str | None):
        """Returns (status, headers, body bytes); raises HubError."""
        self._check_token(auth)
        parts = raw_path.strip("/").split("/")
        if parts[:1] == ["api"]:
            return self._api(method, parts[1:], query, body, auth)
        # file downloads: /{ns}/{name}/resolve/{rev}/{path} and /datasets/{ns}/{name}/resolve/{rev}/{path}
        if method in ("GET", "HEAD") and len(parts) >= 5:
            if parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":
                return self._resolve("dataset", f"{parts[1]}/{parts[2]}", parts[4], parts[5:], auth)
            if parts[2] == "resolve":
                return self._resolve("model", f"{parts[0]}/{parts[1]}", parts[3], parts[4:], auth)
        raise HubError(501, f"the local hub has no route for {method} {raw_path}")

    def _api(self, method: str, parts: list[str], query: dict, body: bytes, auth: str | None):
        if method == "POST" and parts == ["repos", "create"]:
            return self._create_repo(_json(body), auth)
        if method == "POST" and parts == ["validate-yaml"]:
            return self._validate_yaml(_json(body))
        if method == "GET" and parts == ["whoami-v2"]:
            self._require_write(auth)
            return _ok({"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})
        if len(parts) < 3 or parts[0] not in TYPES:
            raise HubError(501, f"the local hub has no route for {method} /api/{'/'.join(parts)}")
        repo_type, repo_id = TYPES[parts[0]], f"{unquote(parts[1])}/{unquote(parts[2])}"
        action, rest = (parts[3], parts[4:]) if len(parts) > 3 else ("", [])
        rev = unquote(rest[0]) if rest else "main"
        with self._lock:
            repo = self._find(repo_type, repo_id, auth)
            if method == "GET" and action == "":
                return self._repo_info(repo, "main", query)
            if method == "GET" and action == "revision" and rest:
                return self._repo_info(repo, rev, query)
            if method == "GET" and action == "refs":
                return self._refs(repo)
            if method == "GET" and action == "commits":
                return self._commits(repo, rev)
            if method == "GET" and action == "tree":
                return self._tree(repo, rev, unquote("/".join(rest[1:])), query)
            if method == "POST" and action == "preupload" and rest:
                self._require_write(auth)
                return self._preupload(repo, rev, _json(body), query)
            if method == "POST" and action == "commit" and rest:
                self._require_write(auth)
                return self._commit(repo, rev, body, query)
            if action == "branch" and rest and method in ("POST", "DELETE"):
                self._require_write(auth)
                if method == "POST":
                    return self._create_branch(repo, rev, _json(body) if body else {})
                return self._delete_branch(repo, rev)
        raise HubError(501, f"the local hub has no route for {method} /api/{'/'.join(parts)}")

    # ------------------------------------------------------------------ auth

    def _check_token(self, auth: str | None) -> None:
        # like the Hub: a wrong token is refused everywhere, even on public reads
        if self.token is not None and auth is not None and auth != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _require_write(self, auth: str | None) -> None:
        if self.token is not None and auth is None:
            raise HubError(401, "Invalid username or password.")

    def _find(self, repo_type: str, repo_id: str, auth: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        # a private repo is invisible without a token: the Hub answers 401 with RepoNotFound, not 403
        if repo is None or (repo.private and self.token is not None and auth is None):
            raise HubError(404 if repo is None else 401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _web_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ endpoints

    def _create_repo(self, payload: dict, auth: str | None):
        self._require_write(auth)
        name, namespace = payload.get("name", ""), payload.get("organization")
        if "/" in name:
            namespace, name = name.split("/", 1)
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"the local hub serves models and datasets, not {repo_type!r}")
        if not name:
            raise HubError(400, "no repo name")
        repo_id = f"{namespace or self.user}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self._lock:
            existing = self.repos.get((repo_type, repo_id))
            if existing is not None:
                # create_repo(exist_ok=True) swallows the 409 and then still reads "url" from this body
                raise HubError(409, f"You already created this {repo_type} repo", url=self._web_url(existing))
            repo = Repo(repo_type, repo_id, private)
            self._add_commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit", "")
            self.repos[(repo_type, repo_id)] = repo
        return _ok({"url": self._web_url(repo), "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict):
        try:
            card_data(payload.get("content", "").encode())
        except (yaml.YAMLError, ValueError) as err:
            raise HubError(400, "Invalid metadata in README.md", errors=[{"message": str(err)}]) from err
        return _ok({})

    def _repo_info(self, repo: Repo, revision: str, query: dict):
        commit = self._commit_of(repo, revision)
        with_blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, content in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(content), blobId=git_blob_oid(content))
            siblings.append(sibling)
        try:
            data = card_data(commit.files.get("README.md"))
        except (yaml.YAMLError, ValueError):
            data = None
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "createdAt": repo.created,
            "lastModified": commit.date, "tags": list((data or {}).get("tags") or []), "siblings": siblings,
        }
        if data is not None:
            info["cardData"] = data
            if repo.repo_type == "model" and data.get("library_name"):
                info["library_name"] = data["library_name"]
        return _ok(info)

    def _refs(self, repo: Repo):
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                    for name, oid in sorted(repo.branches.items())]
        return _ok({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def _commits(self, repo: Repo, revision: str):
        self._commit_of(repo, revision)
        return _ok([{
            "id": c.oid, "title": c.title, "message": c.title + (f"\n\n{c.description}" if c.description else ""),
            "authors": [{"user": self.user}], "date": c.date,
        } for c in repo.history(revision)])

    def _tree(self, repo: Repo, revision: str, path_in_repo: str, query: dict):
        commit = self._commit_of(repo, revision)
        base = path_in_repo.strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        folders: dict[str, list[str]] = {}  # folder -> the blob oids under it, for a stable tree oid
        for path, content in commit.files.items():
            parents = path.split("/")[:-1]
            for i in range(1, len(parents) + 1):
                folders.setdefault("/".join(parents[:i]), []).append(path + git_blob_oid(content))
        if base and base not in folders:
            raise HubError(404, f"{base} does not exist on {revision!r} (or is not a folder)", "EntryNotFound",
                           headers={"X-Repo-Commit": commit.oid})

        def listed(path: str) -> bool:
            if base and not path.startswith(base + "/"):
                return False
            return recursive or path.rpartition("/")[0] == base

        entries = [{"type": "directory", "oid": hashlib.sha1("".join(sorted(v)).encode()).hexdigest(),
                    "size": 0, "path": p} for p, v in sorted(folders.items()) if listed(p)]
        entries += [{"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": p}
                    for p, content in sorted(commit.files.items()) if listed(p)]
        return _ok(entries)

    def _preupload(self, repo: Repo, revision: str, payload: dict, query: dict):
        if query.get("create_pr"):
            raise HubError(400, "the local hub does not do pull requests")
        commit = self._commit_of(repo, revision)
        files = []
        for item in payload.get("files", []):
            answer = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
            if item["path"] in commit.files:
                # lets the client drop files that did not change (no-op detection)
                answer["oid"] = git_blob_oid(commit.files[item["path"]])
            files.append(answer)
        return _ok({"files": files, "commitOid": commit.oid})

    def _commit(self, repo: Repo, revision: str, body: bytes, query: dict):
        if query.get("create_pr"):
            raise HubError(400, "the local hub does not do pull requests")
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.branches:
            if repo.resolve(revision) is not None:
                raise HubError(400, f"Invalid rev id: {revision} is not a branch")
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first line of a commit must be its header")
        header = lines[0]["value"]
        head = repo.commits[repo.branches[branch]]
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        if not header.get("summary"):
            raise HubError(400, "the commit has no summary")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "").strip("/")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unknown encoding {value.get('encoding')!r}")
                clash = [p for p in files if p.startswith(path + "/") or path.startswith(p + "/")]
                if clash:
                    raise HubError(400, f"{path} clashes with {clash[0]} (a file and a folder of the same name)")
                files[path] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                # "lfsFile" included: preupload never answers "lfs", so a client that sends one is a bug
                raise HubError(400, f"the local hub does not accept {key!r} operations")
        commit = self._add_commit(repo, branch, files, header["summary"], header.get("description", ""))
        return _ok({"success": True, "commitOid": commit.oid, "commitUrl": f"{self._web_url(repo)}/commit/{commit.oid}",
                    "commitMessage": commit.title, "commitDescription": commit.description, "pullRequestUrl": None,
                    "hookOutput": ""})

    def _add_commit(self, repo: Repo, branch: str, files: dict[str, bytes], title: str, description: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([parent, title, description, next(self._counter),
                           sorted((p, git_blob_oid(c)) for p, c in files.items())])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, description, files, parent, _now())
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _create_branch(self, repo: Repo, branch: str, payload: dict):
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        start = self._commit_of(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        return _ok({})

    def _delete_branch(self, repo: Repo, branch: str):
        if branch == "main":
            raise HubError(403, "the default branch cannot be deleted")
        if repo.branches.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return _ok({})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path_parts: list[str], auth: str | None):
        path = unquote("/".join(path_parts))
        with self._lock:
            repo = self._find(repo_type, repo_id, auth)
            commit = self._commit_of(repo, unquote(revision))
            content = commit.files.get(path)
        if content is None:
            # X-Repo-Commit lets the client cache the absence of the file for that commit
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(content)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        return 200, headers, content


def _json(body: bytes) -> dict:
    try:
        return json.loads(body or b"{}")
    except json.JSONDecodeError as err:
        raise HubError(400, f"the body is not JSON: {err}") from err


def _ok(payload) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(payload).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's pooled httpx2 connections expect
    timeout = 60  # an idle keep-alive connection ends after this, so no thread waits forever

    def setup(self):
        super().setup()
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)
            self.server.hub.connections_opened += 1

    def finish(self):
        with self.server.hub._lock:
            self.server.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):  # the request log on the hub replaces stderr noise
        pass

    def do_GET(self):
        self._serve("GET")

    def do_HEAD(self):
        self._serve("HEAD")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str):
        hub: LocalHub = self.server.hub
        split = urlsplit(self.path)
        body = self._read_body()  # always, so that the next request on this connection starts clean
        auth = self.headers.get("Authorization")
        injected = hub._injected_failure(method, split.path)
        try:
            if injected is not None:
                raise HubError(injected, f"injected failure ({injected}) for {method} {split.path}")
            status, headers, payload = hub.handle(method, split.path, parse_qs(split.query), body, auth)
            if status == 200 and "Range" in self.headers and method == "GET":
                status, headers, payload = _ranged(self.headers["Range"], headers, payload)
        except HubError as err:
            status = err.status
            headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": err.message,
                       **({"X-Error-Code": err.code} if err.code else {}), **err.headers}
            payload = json.dumps({"error": err.message, **err.extra}).encode()
        except Exception as err:  # a bug in the local hub: say so in the answer instead of dropping the connection
            status, headers = 500, {"Content-Type": "text/plain; charset=utf-8"}
            payload = f"local hub bug: {type(err).__name__}: {err}".encode()
        # logged before answering: a test that reads the log right after the client returns sees this request
        with hub._lock:
            hub.requests.append((method, split.path, status))
            hub.authorizations.append(auth)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))  # HEAD too: it is the size of the file
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)


def _ranged(range_header: str, headers: dict, payload: bytes) -> tuple[int, dict, bytes]:
    # http_get resumes an interrupted download with "Range: bytes=N-"
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
    if match is None or not (match.group(1) or match.group(2)):
        return 200, headers, payload
    total = len(payload)
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
    else:
        start, end = max(total - int(match.group(2)), 0), total - 1
    if start >= total or start > end:
        raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{total}"})
    return 206, {**headers, "Content-Range": f"bytes {start}-{end}/{total}"}, payload[start : end + 1]


@pytest.fixture(name="local_hub")
def local_hub_fixture(tmp_path, monkeypatch):
    """A started LocalHub with the in-process client (and env for subprocesses) pointed at it.

    Use the token ``TOKEN`` explicitly (``token=TOKEN``); no other token is reachable.
    """
    import huggingface_hub.hf_api
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    hub = LocalHub().start()
    home = tmp_path / "hf_home"
    cache = home / "hub"
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(home), "HF_HUB_CACHE": str(cache)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_ENABLE_HF_TRANSFER"):
        monkeypatch.delenv(name, raising=False)
    # the constants were read from the environment when huggingface_hub was first imported (tests/conftest.py
    # sets HF_HUB_OFFLINE=1 before that), so the env alone changes nothing in this process
    patched = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,  # is_offline_mode() returns this module attribute
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    # the module-level HfApi behind huggingface_hub.create_repo, upload_folder, ... kept the old endpoint
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
    # every retry goes through http_backoff / http_stream_backoff with their default waits (1 s doubling to
    # 8 s); the modules that imported them hold the same function objects, so their defaults are patched
    for fn in (_http.http_backoff, _http.http_stream_backoff.__wrapped__):
        monkeypatch.setitem(fn.__kwdefaults__, "base_wait_time", 0.01)
        monkeypatch.setitem(fn.__kwdefaults__, "max_wait_time", 0.02)
    try:
        yield hub
    finally:
        _http.close_session()  # the pooled keep-alive connections point at this server
        hub.stop()
