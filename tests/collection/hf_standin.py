"""A local stand-in for the Hugging Face hub's file endpoint, strict like the real one, for the model role's tests.

Serves `/{repo}/resolve/{revision}/{file}` (HEAD and GET, with Range) for the repositories it is given,
with the headers huggingface_hub reads (X-Repo-Commit, ETag/X-Linked-Etag, X-Linked-Size) and the
hub's 404s with X-Error-Code for unknown repositories, revisions and files. Records every request,
so tests can tell whether a download was attempted. Point the client at it with HF_ENDPOINT.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Repo:
    commit: str                                             # 40-hex commit every revision resolves to
    files: dict[str, Path]                                  # file name -> content on disk
    branches: tuple[str, ...] = ("main",)
    _sha: dict[str, str] = field(default_factory=dict)

    def sha256(self, name: str) -> str:
        if name not in self._sha:
            self._sha[name] = hashlib.sha256(self.files[name].read_bytes()).hexdigest()
        return self._sha[name]


class HubStandIn:
    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                stand_in._serve(self, body=False)

            def do_GET(self):
                stand_in._serve(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self) -> int:
        """File downloads so far (GETs of /resolve/, not the client's other calls)."""
        return sum(1 for method, path in self.requests if method == "GET" and "/resolve/" in path)

    def _error(self, h, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(body)

    def _serve(self, h, body: bool) -> None:
        self.requests.append((h.command, h.path))
        m = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)(\?.*)?", h.path)
        if not m:
            return self._error(h, 404, "EntryNotFound", f"no route {h.path}")
        repo = self.repos.get(m["repo"])
        if repo is None:  # the real hub answers 401 for unknown repos, so private ones do not leak
            return self._error(h, 401, "RepoNotFound", f"Repository Not Found for url: {h.path}")
        if m["rev"] != repo.commit and m["rev"] not in repo.branches:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {m['rev']}")
        if m["file"] not in repo.files:
            return self._error(h, 404, "EntryNotFound", f"{m['file']} does not exist at {m['rev']}")
        path = repo.files[m["file"]]
        size = path.stat().st_size
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if rng:
            start = int(rng[1])
        h.send_response(206 if rng else 200)
        etag = f'"{repo.sha256(m["file"])}"'
        h.send_header("ETag", etag)
        h.send_header("X-Linked-Etag", etag)
        h.send_header("X-Linked-Size", str(size))
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(size - start))
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        h.end_headers()
        if body:
            with open(path, "rb") as f:
                f.seek(start)
                while block := f.read(1 << 20):
                    h.wfile.write(block)
