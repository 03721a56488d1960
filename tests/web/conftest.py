"""The page's test bench: the shipped NGINX site (rendered from the web role's template with its
defaults) run by a real /usr/sbin/nginx in front of a real backend, and Debian's Chromium.

Fixtures:
- `render_site(**overrides) -> str`: ampere-llm-site.conf.j2 rendered with defaults/main.yml plus
  overrides, the way Ansible's template module renders it (trim_blocks, undefined is an error).
- `front(backend_url, **overrides) -> Front`: NGINX in the foreground on a free 127.0.0.1 port with
  a temp prefix, root = the web role's files/web, proxying to backend_url; stopped at teardown.
- `browser`: one headless Chromium per session; `page` a fresh context per test that records
  console messages and CSP violations, and leaves desktop and phone screenshots in
  artifacts/screenshots/.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta
import pytest
from web_helpers import CHROMIUM, CHROMIUM_ARGS, NGINX, ROLE, WEB, free_port, role_defaults


@pytest.fixture(scope="session")
def render_site():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    name = "ampere-llm-site.conf.j2"
    template = env.get_template(name)
    used = jinja2.meta.find_undeclared_variables(env.parse(env.loader.get_source(env, name)[0]))

    def render(**overrides) -> str:
        values = {**role_defaults(), **overrides}
        # A default that is itself Jinja (it needs Ansible's facts) must be set by the bench.
        unresolved = sorted(k for k in used if isinstance(values.get(k), str) and "{{" in values[k])
        assert not unresolved, f"set these for the bench, their defaults need Ansible: {unresolved}"
        return template.render(**values)

    return render


@dataclass
class Front:
    """NGINX serving the page in front of one backend."""
    url: str
    prefix: Path
    proc: subprocess.Popen
    config: str
    headers_seen: list = field(default_factory=list)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 30):
        """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def error_log(self) -> str:
        p = self.prefix / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""


def nginx_conf(prefix: Path, site: Path) -> str:
    # The minimal main config around the shipped site: what Debian's nginx.conf provides that the
    # site relies on (mime types, gzip on), with every path in the temp prefix.
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read files/web wherever the clone is
    temp = "\n".join(f"  {kind}_temp_path {prefix}/tmp/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  gzip on;
{temp}
  include {site};
}}
"""


@pytest.fixture
def front(render_site, tmp_path):
    started: list[Front] = []

    def start(backend_url: str, **overrides) -> Front:
        prefix = tmp_path / f"nginx-{len(started)}"
        (prefix / "tmp").mkdir(parents=True)
        port = free_port()
        values = dict(web_port=port, web_listen_addresses=["127.0.0.1"], web_root=str(WEB),
                      web_backend=backend_url.removeprefix("http://"), web_node_name="front-test",
                      web_access_log=str(prefix / "access.log"))
        site = render_site(**{**values, **overrides})
        (prefix / "ampere-llm.conf").write_text(site)
        (prefix / "nginx.conf").write_text(nginx_conf(prefix, prefix / "ampere-llm.conf"))
        test = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                               "-e", str(prefix / "error.log")], capture_output=True, text=True)
        assert test.returncode == 0, f"nginx -t refused the rendered site:\n{test.stderr}\n{site}"
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-e", str(prefix / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        f = Front(f"http://127.0.0.1:{port}", prefix, proc, site)
        started.append(f)
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited with {proc.returncode}:\n{f.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nginx did not listen within 10 s:\n{f.error_log()}")
                time.sleep(0.02)  # a poll interval, not a wait for an outcome

    yield start
    for f in started:
        f.proc.terminate()
        try:
            f.proc.wait(10)
        except subprocess.TimeoutExpired:
            f.proc.kill()
            f.proc.wait()
        print(f"--- nginx error.log ({f.url})\n{f.error_log()}")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


# Recorded in the page before its own scripts run: CSP violations (the event fires for every
# blocked load or inline script) and dialogs (an alert() from injected markup would show here).
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(WATCH)
    pg = context.new_page()
    pg.console_messages_seen = []
    pg.dialogs_seen = []
    pg.on("console", lambda m: pg.console_messages_seen.append(f"{m.type}: {m.text}"))
    pg.on("dialog", lambda d: (pg.dialogs_seen.append(d.message), d.dismiss()))
    pg.set_default_timeout(60_000)
    yield pg
    context.close()
