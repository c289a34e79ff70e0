"""A small Hugging Face Hub-protocol server for tests, in the spirit of moto for AWS.

No PyPI package serves as a writable test Hub (olah is a read-only mirror; hf-local-hub ships
no server), so this implements exactly the routes that huggingface_hub 2.4.0 calls, with
``HF_HUB_DISABLE_XET=1``, for these client calls:

- ``HfApi.create_repo`` (``POST /api/repos/create``; 409 carrying ``url`` when it exists)
- ``HfApi.create_commit`` / ``upload_file`` / ``upload_folder``: ``POST /api/validate-yaml``,
  ``POST /api/models/{repo}/preupload/{rev}`` (LFS for weights and images, with the current
  oid so unchanged files are skipped), the git-lfs batch API ``POST /{repo}.git/info/lfs/objects/batch``
  ("basic" transfer) + ``PUT /lfs/{oid}``, and ``POST /api/models/{repo}/commit/{rev}`` (NDJSON)
- ``HfApi.create_tag`` / ``create_branch`` (``POST /api/models/{repo}/tag/{rev}``, ``/branch/{name}``)
- ``HfApi.model_info`` / ``repo_info`` / ``repo_exists`` / ``file_exists`` / ``list_repo_files`` /
  ``list_repo_tree`` (``GET /api/models/{repo}[/revision/{rev}]``, ``/tree/{rev}[/{path}]``)
- ``hf_hub_download`` / ``snapshot_download`` / ``ModelCard.load``: ``HEAD``/``GET
  /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size``
  and ``Range``
- errors: 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``;
  401 for writes without a token and for private repos read without one.

File contents are stored on disk by sha256; commits get real sha1 ids over (parent, tree, message),
so pinning a revision is tested for real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".png", ".jpg", ".pt")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.onnx filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class HubState:
    """Repos, refs and commits in memory; file contents on disk under ``root/objects``."""

    def __init__(self, root: Path) -> None:
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, dict] = {}
        self.lock = threading.Lock()

    def put_object(self, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        (self.objects / oid).write_bytes(data)
        return oid

    def has_object(self, oid: str) -> bool:
        return (self.objects / oid).is_file()

    def repo(self, repo_id: str, token: str | None = None) -> dict:
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and not token):
            raise HubError(404 if repo is None else 401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def resolve(self, repo: dict, rev: str) -> str:
        rev = unquote(rev)
        for table in (repo["branches"], repo["tags"]):
            if rev in table:
                return table[rev]
        if rev in repo["commits"]:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def commit(self, repo: dict, branch: str, files: dict, message: str) -> str:
        parent = repo["branches"].get(branch)
        body = json.dumps({"parent": parent, "files": files, "message": message}, sort_keys=True)
        sha = hashlib.sha1(body.encode()).hexdigest()
        repo["commits"][sha] = {"parent": parent, "files": files, "message": message}
        repo["branches"][branch] = sha
        return sha

    def file_entry(self, data_oid: str, size: int, path: str) -> dict:
        lfs = path.endswith(LFS_SUFFIXES)
        content = (self.objects / data_oid).read_bytes()
        return {"sha256": data_oid, "size": size, "lfs": lfs, "git_oid": git_blob_oid(content)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    endpoint: str

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") and len(auth) > 7 else None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has headers only, errors included
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            with self.state.lock:
                self._route(method, url.path, parse_qs(url.query), body)
        except HubError as e:
            headers = {"X-Error-Code": e.code} if e.code else {}
            headers["X-Error-Message"] = str(e)
            self._json({"error": str(e)}, e.status, headers)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _need_token(self) -> str:
        token = self._token()
        if not token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    # -- routes --------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict, body: bytes) -> None:
        s = self.state
        if method == "POST" and path == "/api/repos/create":
            self._need_token()
            req = json.loads(body)
            repo_id = f"{req.get('organization') or 'user'}/{req['name']}"
            url = f"{self.endpoint}/{repo_id}"
            if repo_id in s.repos:
                return self._json({"error": "You already created this model repo", "url": url}, 409)
            repo = {"private": bool(req.get("private")) or req.get("visibility") == "private",
                    "branches": {}, "tags": {}, "commits": {}}
            s.repos[repo_id] = repo
            oid = s.put_object(GITATTRIBUTES)
            s.commit(repo, "main", {".gitattributes": s.file_entry(oid, len(GITATTRIBUTES), ".gitattributes")},
                     "initial commit")
            return self._json({"url": url, "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            return self._json({"errors": [], "warnings": []})
        if method == "PUT" and (m := re.fullmatch(r"/lfs/([0-9a-f]{64})", path)):
            if hashlib.sha256(body).hexdigest() != m[1]:
                raise HubError(400, "uploaded bytes do not match the LFS oid")
            s.put_object(body)
            return self._json({})
        if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            self._need_token()
            s.repo(m[1], self._token())
            objects = []
            for obj in json.loads(body)["objects"]:
                item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if not s.has_object(obj["oid"]):
                    item["actions"] = {"upload": {"href": f"{self.endpoint}/lfs/{obj['oid']}"}}
                objects.append(item)
            return self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree|preupload|commit|tag|branch)/([^/]+)(/.*)?)?", path):
            return self._api(method, m[1], m[2], m[3], (m[4] or "").lstrip("/"), query, body)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(method, m[1], m[2], unquote(m[3]))
        raise HubError(404, f"no route for {method} {path}")

    def _api(self, method, repo_id, action, rev, rest, query, body) -> None:
        s = self.state
        token = self._token()
        repo = s.repo(repo_id, token)
        if method in ("GET", "HEAD") and action in (None, "revision"):
            sha = s.resolve(repo, rev or "main")
            files = repo["commits"][sha]["files"]
            return self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo["private"],
                               "siblings": [{"rfilename": p} for p in sorted(files)], "tags": [],
                               "downloads": 0, "likes": 0, "disabled": False, "gated": False})
        if method == "GET" and action == "tree":
            files = repo["commits"][s.resolve(repo, rev)]["files"]
            prefix = unquote(rest).rstrip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries, dirs = [], set()
            for p, f in sorted(files.items()):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                tail = p[len(prefix) + 1:] if prefix else p
                if "/" in tail and not recursive:
                    dirs.add((prefix + "/" if prefix else "") + tail.split("/")[0])
                    continue
                item = {"type": "file", "oid": f["git_oid"], "size": f["size"], "path": p}
                if f["lfs"]:
                    item["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
                entries.append(item)
            entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
            if prefix and not entries:
                raise HubError(404, f"{prefix} not found", "EntryNotFound")
            return self._json(entries)
        self._need_token()
        if action == "preupload":
            files = repo["commits"][s.resolve(repo, rev)]["files"]
            out = []
            for f in json.loads(body)["files"]:
                lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000
                current = files.get(f["path"])
                oid = (current["sha256"] if lfs else current["git_oid"]) if current else None
                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": oid})
            return self._json({"files": out, "commitOid": s.resolve(repo, rev)})
        if action == "commit":
            branch = unquote(rev)
            if branch not in repo["branches"]:
                raise HubError(404, f"branch {branch} not found", "RevisionNotFound")
            files = dict(repo["commits"][repo["branches"][branch]]["files"])
            message = ""
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value.get("summary", "")
                    if value.get("parentCommit") and value["parentCommit"] != repo["branches"][branch]:
                        raise HubError(412, "parentCommit is not the head of the branch")
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    files[value["path"]] = s.file_entry(s.put_object(data), len(data), value["path"])
                elif key == "lfsFile":
                    if not s.has_object(value["oid"]):
                        raise HubError(400, f"LFS object {value['oid']} was not uploaded")
                    files[value["path"]] = s.file_entry(value["oid"], value["size"], value["path"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    raise HubError(400, f"unsupported commit operation {key}")
            sha = s.commit(repo, branch, files, message)
            return self._json({"success": True, "commitOid": sha, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}"})
        if action == "tag":
            req = json.loads(body)
            if req["tag"] in repo["tags"]:
                raise HubError(409, f"tag {req['tag']} already exists")
            repo["tags"][req["tag"]] = s.resolve(repo, rev)
            return self._json({})
        if action == "branch":
            req = json.loads(body) if body else {}
            repo["branches"][unquote(rev)] = s.resolve(repo, req.get("startingPoint") or "main")
            return self._json({})
        raise HubError(404, f"no route for {method} {action}")

    def _resolve(self, method: str, repo_id: str, rev: str, path: str) -> None:
        s = self.state
        repo = s.repo(repo_id, self._token())
        sha = s.resolve(repo, rev)
        f = repo["commits"][sha]["files"].get(path)
        if f is None:
            raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound")
        data = (s.objects / f["sha256"]).read_bytes()
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "ETag": f'"{f["sha256"] if f["lfs"] else f["git_oid"]}"'}
        if f["lfs"]:
            headers.update({"X-Linked-Etag": f'"{f["sha256"]}"', "X-Linked-Size": f["size"]})
        status, rng = 200, self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())):
            start = int(m[1]) if m[1] else max(0, len(data) - int(m[2]))
            end = int(m[2]) if m[1] and m[2] else len(data) - 1
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers["Content-Length"] = len(data)
        self._send(status, data, headers)


class HubServer:
    """Start with ``HubServer(root).start()``; ``.endpoint`` is the URL for ``HF_ENDPOINT``."""

    def __init__(self, root: Path, port: int = 0) -> None:
        handler = type("BoundHandler", (Handler,), {"state": HubState(Path(root))})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        handler.endpoint = self.endpoint
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
