"""A small Hugging Face Hub served on 127.0.0.1, for testing Hub code paths for real.

It speaks the subset of the Hub HTTP protocol that ``huggingface_hub`` (2.x) uses for:

- downloads: ``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` with ``ETag``, ``X-Repo-Commit``,
  ``Content-Length`` and, for LFS files, ``X-Linked-Etag``/``X-Linked-Size``; ``Range`` requests;
  404s carrying ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so the
  client raises its real exceptions (``hf_hub_download``, ``snapshot_download``);
- listings: ``GET /api/{type}s/{repo}[/revision/{rev}]`` (``model_info``/``repo_info``) and
  ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``list_repo_tree``/``list_repo_files``);
- writes (a bearer token is required): ``POST /api/repos/create``, ``POST /api/validate-yaml``,
  ``POST .../preupload/{rev}``, the LFS batch API ``POST /{repo}.git/info/lfs/objects/batch`` plus the
  ``PUT`` of each object, the NDJSON ``POST .../commit/{rev}`` and ``POST .../branch/{name}`` —
  enough for ``create_repo``, ``upload_file``, ``upload_folder``, ``create_commit`` and
  ``PreTrainedModel.push_to_hub``; ``GET /api/whoami-v2``.

Xet storage is never advertised, so clients use plain HTTP and the legacy LFS protocol (the ``hub``
fixture also sets ``HF_HUB_DISABLE_XET``). Every commit keeps a full snapshot, so old revisions stay
downloadable. Files are LFS when their extension is a weights/binary one or they exceed 10 MiB, as
with the Hub's default ``.gitattributes``.

Use it through the ``hub`` fixture in ``tests/conftest.py``::

    def test_download(hub):
        hub.add_file("org/repo", "config.json", b"{}")
        path = huggingface_hub.hf_hub_download("org/repo", "config.json")
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz", ".npy", ".onnx", ".h5", ".msgpack", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_PREFIXES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}  # URL prefix -> repo type
USER = "emulator-user"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs_path(path: str, size: int) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


@dataclass(frozen=True)
class Blob:
    """One stored file version; the content lives on disk under its sha256."""

    sha256: str
    size: int
    content_sha1: str  # git blob id of the content (regular files only; "" for LFS files)
    lfs: bool

    @property
    def git_sha1(self) -> str:
        """The git blob id: of the LFS pointer for LFS files, of the content otherwise."""
        return git_blob_sha1(self.lfs_pointer()) if self.lfs else self.content_sha1

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1

    def lfs_pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: float
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    """An HTTP error answered with the Hub's error headers."""

    def __init__(
        self, status: int, code: str | None, message: str, commit: str | None = None, extra: dict | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit
        self.extra = extra or {}  # more fields of the JSON body


class HubEmulator:
    """A threaded HTTP server emulating the Hugging Face Hub on 127.0.0.1 (a free port).

    Args:
        root: Folder where blobs are stored.
        token: The bearer token accepted for writes.

    Attributes:
        url: The endpoint, e.g. ``http://127.0.0.1:41234`` (set ``HF_ENDPOINT`` to it).
        requests: ``(method, path)`` of every request served, to assert what a client did.
    """

    def __init__(self, root: str | Path, token: str = "hf_emulator_token"):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubEmulator:
        emulator = self

        class Handler(_HubRequestHandler):
            hub = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ----------------------------------------------------------------- seeding and inspection
    def create_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """Create an empty repo with an initial commit on ``main`` (no-op when it exists)."""
        with self._lock:
            key = (repo_type, repo_id)
            if key not in self.repos:
                repo = Repo(repo_type, repo_id)
                self.repos[key] = repo
                self._commit(repo, "main", "initial commit", {}, set())
            return self.repos[key]

    def add_file(
        self, repo_id: str, path: str, data: bytes, *, repo_type: str = "model", revision: str = "main"
    ) -> str:
        """Commit one file (creating the repo if needed); returns the new commit oid."""
        with self._lock:
            repo = self.create_repo(repo_id, repo_type)
            blob = self._store(data, is_lfs_path(path, len(data)))
            return self._commit(repo, revision, f"Upload {path}", {path: blob}, set()).oid

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every file of a revision with its content."""
        with self._lock:
            commit = self._get_commit(repo_type, repo_id, revision)
            return {path: self._read(blob) for path, blob in commit.files.items()}

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """The commit oid a revision points to."""
        with self._lock:
            return self._get_commit(repo_type, repo_id, revision).oid

    # ----------------------------------------------------------------- storage
    def _store(self, data: bytes, lfs: bool) -> Blob:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.blob_dir / sha256
        if not target.exists():
            temporary = target.with_suffix(f".{threading.get_ident()}.tmp")
            temporary.write_bytes(data)
            temporary.replace(target)
        return Blob(sha256, len(data), "" if lfs else git_blob_sha1(data), lfs)

    def _read(self, blob: Blob) -> bytes:
        return (self.blob_dir / blob.sha256).read_bytes()

    def _commit(self, repo: Repo, branch: str, title: str, added: dict[str, Blob], deleted: set[str]) -> Commit:
        parent = repo.resolve(branch) if branch in repo.branches else None
        if repo.branches and parent is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        files = dict(parent.files) if parent is not None else {}
        for path in deleted:
            files = {name: blob for name, blob in files.items() if name != path and not name.startswith(path + "/")}
        files.update(added)
        date = time.time()
        seed = f"{repo.repo_type}/{repo.repo_id}|{parent.oid if parent else ''}|{title}|{date}|{len(repo.commits)}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, title, date, files)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def _get_commit(self, repo_type: str, repo_id: str, revision: str) -> Commit:
        commit = self._get_repo(repo_type, repo_id).resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(timestamp))


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Routes requests to the ``HubEmulator`` in ``hub``."""

    hub: HubEmulator
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a length

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence the per-request log
        pass

    # ----------------------------------------------------------------- plumbing
    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, content_type: str | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers, "application/json")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        body = self._read_body() if method in ("POST", "PUT") else b""
        with self.hub._lock:
            self.hub.requests.append((method, parts.path))
        try:
            self._route(method, path, query, body)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code is not None:
                headers["X-Error-Code"] = error.code
            if error.commit is not None:
                headers["X-Repo-Commit"] = error.commit
            self._json(error.status, {"error": error.message, **error.extra}, headers)

    def _require_token(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            raise HubError(401, None, "Invalid credentials in Authorization header")

    @staticmethod
    def _split_repo(segments: list[str]) -> tuple[str, str, list[str]]:
        """``[datasets/]namespace/name/rest...`` -> (repo type, repo id, rest)."""
        repo_type = "model"
        if segments and segments[0] in REPO_PREFIXES:
            repo_type, segments = REPO_PREFIXES[segments[0]], segments[1:]
        if len(segments) < 2:
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo_type, f"{segments[0]}/{segments[1]}", segments[2:]

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        segments = [segment for segment in path.split("/") if segment]
        if segments[:1] == ["api"]:
            self._route_api(method, segments[1:], query, body)
        elif segments[:1] == ["__lfs__"] and method == "PUT" and len(segments) == 2:
            self._lfs_put(segments[1], body)
        else:
            self._route_files(method, segments, body)

    # ----------------------------------------------------------------- file routes
    def _route_files(self, method: str, segments: list[str], body: bytes) -> None:
        if method == "POST" and segments[-4:] == ["info", "lfs", "objects", "batch"]:
            repo_segments = segments[:-4]
            if not repo_segments or not repo_segments[-1].endswith(".git"):
                raise HubError(404, None, "no such LFS endpoint")
            repo_segments[-1] = repo_segments[-1][: -len(".git")]
            repo_type, repo_id, _ = self._split_repo(repo_segments)
            self._lfs_batch(repo_type, repo_id, body)
            return
        repo_type, repo_id, rest = self._split_repo(segments)
        if method in ("HEAD", "GET") and len(rest) >= 3 and rest[0] == "resolve":
            self._resolve(repo_type, repo_id, rest[1], "/".join(rest[2:]))
            return
        raise HubError(404, None, f"no route for {method} /{'/'.join(segments)}")

    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        with self.hub._lock:
            commit = self.hub._get_commit(repo_type, repo_id, revision)
            blob = commit.files.get(filename)
            if blob is None:
                raise HubError(404, "EntryNotFound", f"{filename} does not exist on {revision}", commit=commit.oid)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(commit.date, usegmt=True),
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        status, start, end = 200, 0, blob.size - 1
        requested = self.headers.get("Range")
        if requested and requested.startswith("bytes="):
            first, _, last = requested[len("bytes=") :].partition("-")
            start, end = int(first or 0), min(int(last) if last else blob.size - 1, blob.size - 1)
            if start >= blob.size:
                self._send(416, headers={**headers, "Content-Range": f"bytes */{blob.size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        headers["Content-Length"] = str(end - start + 1)
        self._send(status, b"", headers, "application/octet-stream")
        if self.command == "GET" and end >= start:  # stream the bytes straight from the blob file
            with open(self.hub.blob_dir / blob.sha256, "rb") as handle:
                self.connection.sendfile(handle, offset=start, count=end - start + 1)

    # ----------------------------------------------------------------- API routes
    def _route_api(self, method: str, segments: list[str], query: dict[str, list[str]], body: bytes) -> None:
        if method == "GET" and segments == ["whoami-v2"]:
            self._require_token()
            self._json(200, {"type": "user", "name": USER, "fullname": USER, "orgs": [], "auth": {}})
            return
        if method == "POST" and segments == ["repos", "create"]:
            self._require_token()
            self._create_repo(json.loads(body or b"{}"))
            return
        if method == "POST" and segments == ["validate-yaml"]:
            self._validate_yaml(json.loads(body or b"{}"))
            return
        if len(segments) < 3 or segments[0] not in ("models", "datasets", "spaces", "kernels"):
            raise HubError(404, None, f"no API route /api/{'/'.join(segments)}")
        repo_type = segments[0][:-1]
        repo_id, rest = f"{segments[1]}/{segments[2]}", segments[3:]
        if method == "GET" and (not rest or rest[0] == "revision"):
            self._repo_info(repo_type, repo_id, rest[1] if len(rest) > 1 else "main")
        elif method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), recursive)
        elif method == "POST" and rest[:1] == ["preupload"] and len(rest) == 2:
            self._require_token()
            self._preupload(repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        elif method == "POST" and rest[:1] == ["commit"] and len(rest) == 2:
            self._require_token()
            if query.get("create_pr", ["0"])[0] == "1":
                raise HubError(501, None, "the Hub emulator does not implement pull requests")
            self._commit(repo_type, repo_id, rest[1], body)
        elif method == "POST" and rest[:1] == ["branch"] and len(rest) == 2:
            self._require_token()
            self._create_branch(repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        else:
            raise HubError(404, None, f"no API route {method} /api/{'/'.join(segments)}")

    def _create_repo(self, payload: dict) -> None:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:
                raise HubError(409, None, f"You already created this {repo_type} repo", extra={"url": url})
            self.hub.create_repo(repo_id, repo_type)
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        if content.startswith("---"):
            header = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                metadata = yaml.safe_load(header)
            except yaml.YAMLError as error:
                self._json(400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []})
                return
            if metadata is not None and not isinstance(metadata, dict):
                self._json(400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []})
                return
        self._json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            commit = self.hub._get_commit(repo_type, repo_id, revision)
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": blob.size, "blobId": blob.git_sha1}
            if blob.lfs:
                sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.lfs_pointer())}
            siblings.append(sibling)
        self._json(
            200,
            {
                "_id": repo_id,
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": _iso(commit.date),
                "private": False,
                "gated": False,
                "disabled": False,
                "tags": [],
                "siblings": siblings,
            },
        )

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str, recursive: bool) -> None:
        with self.hub._lock:
            commit = self.hub._get_commit(repo_type, repo_id, revision)
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, dict] = {}
        for path, blob in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for level in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                directory = prefix + "/".join(parts[:level])
                oid = hashlib.sha1(f"{commit.oid}:{directory}".encode()).hexdigest()
                entries.setdefault(directory, {"type": "directory", "oid": oid, "size": 0, "path": directory})
            if len(parts) == 1 or recursive:
                entry = {"type": "file", "oid": blob.git_sha1, "size": blob.size, "path": path}
                if blob.lfs:
                    entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.lfs_pointer())}
                entries[path] = entry
        if folder and not entries:
            raise HubError(404, "EntryNotFound", f"{folder} does not exist on {revision}", commit=commit.oid)
        self._json(200, list(entries.values()))

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        with self.hub._lock:
            commit = self.hub._get_commit(repo_type, repo_id, revision)
        answers = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            existing = commit.files.get(path)
            lfs = is_lfs_path(path, size)
            oid = None if existing is None else (existing.sha256 if lfs else existing.git_sha1)
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": answers, "commitOid": commit.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes) -> None:
        self._require_token()
        payload = json.loads(body or b"{}")
        with self.hub._lock:
            self.hub._get_repo(repo_type, repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, None, "the Hub emulator's LFS batch API only handles uploads")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item["oid"], int(item["size"])
            answer = {"oid": oid, "size": size, "authenticated": True}
            if not (self.hub.blob_dir / oid).exists():
                answer["actions"] = {"upload": {"href": f"{self.hub.url}/__lfs__/{oid}", "header": {}}}
            objects.append(answer)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, f"uploaded content does not match sha256 {oid}")
        self.hub._store(body, lfs=True)
        self._send(200)

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        header: dict = {}
        added: dict[str, Blob] = {}
        deleted: set[str] = set()
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')!r}")
                added[value["path"]] = self.hub._store(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                oid = value["oid"]
                if not (self.hub.blob_dir / oid).exists():
                    raise HubError(422, None, f"LFS object {oid} for {value['path']} was never uploaded")
                added[value["path"]] = Blob(oid, (self.hub.blob_dir / oid).stat().st_size, "", lfs=True)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.add(value["path"].rstrip("/"))
            else:
                raise HubError(400, None, f"unsupported commit operation {key!r}")
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            parent = header.get("parentCommit")
            if parent is not None and not repo.branches.get(revision, "").startswith(parent):
                raise HubError(412, None, f"parent commit {parent} is not the head of {revision}")
            commit = self.hub._commit(repo, revision, header.get("summary", ""), added, deleted)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.hub.url}/{prefix}{repo_id}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, payload: dict) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HubError(409, None, f"Reference already exists: refs/heads/{quote(branch)}")
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {payload.get('startingPoint')}")
            repo.branches[branch] = start.oid
        self._json(200, {})
