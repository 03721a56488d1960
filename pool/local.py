"""The pool on one machine: a seed container, an image of it, N node containers and HAProxy in front.

It mirrors the OCI flow with real parts, so the whole life of a pool can be seen and tested here:
- seed: a booted systemd-nspawn container (scripts/nspawn.sh) configured by site.yml with
  inventories/local plus pool/seed-vars.yml, on the host's network with ports of its own;
- image: a copy of the seed's root filesystem cleaned by image/clean.sh (the very step
  playbooks/bake.yml runs before an OCI image is captured), plus the pool's user-data
  (image/cloud-init/baked.yaml.j2: every node names itself), applied as cloud-init would;
- nodes: containers booted from an image, each in a network namespace of its own that this tool
  creates (/run/netns/<pool>-sK): every node listens on 127.0.0.1 and the same ports, like instances
  from one image on their own VNICs, and nothing listens beyond loopback;
- balancer: HAProxy (Debian's package) run as a plain process on the configuration the balancer
  role deploys (its template, rendered here with this pool's values), one server slot per
  namespace, active HTTP checks on /readyz, leastconn, drain and maintenance through its runtime
  API socket (plugins/module_utils/haproxy_provider.py, the client the role's membership program
  uses too); optionally TLS with HTTP redirected to HTTPS.

Rolling replacement is NOT written here: LocalProvider implements rollout.Provider and the shared
algorithm in plugins/module_utils/rollout.py (also driven by the OCI provider) does the rolling.

CLI (scripts/demo.sh uses it; state in $AMPERE_LLM_CACHE/pool/<name>/):
  local.py up [--name demo] [--nodes 2] [--port 8080] [--seed-ssh 22040 --seed-backend 18000 --seed-web 18080]
              [--tls-cert PEM --https-port 8443]     HTTPS at the balancer, HTTP redirected to it
  local.py bake [--converge KEY=VALUE ...]   new image from the seed (re-converged with those vars first)
  local.py roll IMAGE [--batch-size 1]       rolling replacement of every node to IMAGE
  local.py autoscale [--min 1 --max 2 --window 10 --cooldown 20]
                                             the demand autoscaler (pool/autoscale.py) in the foreground
  local.py status | down

Every node that comes up logs its boot-to-ready time (container start -> /readyz 200 -> first
token, read from inside the node's namespace) and appends it to boot.jsonl in the pool's state.
"""
from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "scripts"))

from ansible_collections.ampere.llm.plugins.module_utils.haproxy_provider import HAProxyError, Runtime
from ansible_collections.ampere.llm.plugins.module_utils.rollout import Node, Rollout, RolloutFailed, plan
from sse import iter_reads

NSPAWN = ROOT / "scripts/nspawn.sh"
CLEAN = ROOT / "image/clean.sh"
USER_DATA = ROOT / "image/cloud-init/baked.yaml.j2"
SEED_VARS = ROOT / "pool/seed-vars.yml"
BALANCER_ROLE = ROOT / "collections/ansible_collections/ampere/llm/roles/balancer"
CACHE = Path(os.environ.get("AMPERE_LLM_CACHE", str(Path.home() / ".cache/ampere-llm")))
BACKEND = "nodes"  # the HAProxy backend holding the node slots


class PoolError(Exception):
    pass


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def run(*cmd, check=True, quiet=False, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], text=True, capture_output=quiet, **kw)
    if check and out.returncode != 0:
        detail = f":\n{out.stdout[-3000:]}{out.stderr[-3000:]}" if quiet else ""
        raise PoolError(f"{' '.join(map(str, cmd[:4]))} ... failed with {out.returncode}{detail}")
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer too (HTTP to HTTPS at the balancer)


_opener = urllib.request.build_opener(_NoRedirect)


def http_status(url: str, timeout: float = 3) -> int:
    """The status of GET url without following redirects; 0 when nothing answers."""
    try:
        with _opener.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextmanager
def in_netns(name: str):
    """Run the block in network namespace /run/netns/NAME: setns(2) moves only the calling thread,
    and a socket made inside stays in that namespace after the thread moves back, so a node's own
    loopback (where its /metrics and /readyz answer, as to a process on the node) is reached without
    a subprocess per request."""
    with open(f"/run/netns/{name}") as target, open("/proc/thread-self/ns/net") as home:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the host's network namespace")


def balancer_values(**values) -> dict:
    """The balancer role's variables as Ansible sees them: its defaults, then `values`; defaults
    that are themselves templates (balancer_server_options) rendered with the result."""
    import jinja2  # Ansible's dependency, in the venv
    import yaml
    v = {**yaml.safe_load((BALANCER_ROLE / "defaults/main.yml").read_text()), **values}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return {k: env.from_string(x).render(**v) if isinstance(x, str) and "{{" in x else x for k, x in v.items()}


def render_balancer_config(**values) -> str:
    """The balancer role's HAProxy template rendered as Ansible's template module renders it
    (trim_blocks; an undefined variable is an error)."""
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(BALANCER_ROLE / "templates"), trim_blocks=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("haproxy.cfg.j2").render(**balancer_values(**values))


@dataclass
class Config:
    """Everything that tells one pool from another on this machine (demo and tests run side by side)."""
    name: str = "demo"
    port: int = 8080            # HAProxy's frontend on 127.0.0.1: the page's URL
    seed_ssh: int = 22040       # inventories/local's seed host
    seed_backend: int = 18000   # the seed's service and page, on the host's loopback; inside every
    seed_web: int = 18080       # node (own namespace) the same ports, which HAProxy's checks use
    slots: int = 4              # balancer slots = most nodes at once (pool size + surge)
    check_inter_ms: int = 1000  # HAProxy check interval; a node is out after `fall` failures
    fall: int = 2
    rise: int = 2
    # HTTPS at the balancer: a PEM file holding the certificate chain and its key. With it, HAProxy
    # terminates TLS on https_port and answers plain HTTP on `port` with a redirect to HTTPS.
    tls_cert: str | None = None
    https_port: int = 8443


@dataclass
class State:
    config: Config
    images: list[str] = field(default_factory=list)
    image: str | None = None          # what new nodes are built from
    slots: dict[str, dict] = field(default_factory=dict)  # "s1" -> {"node", "image"}
    counter: int = 0                     # node names are never reused

    @classmethod
    def load(cls, path: Path) -> State:
        d = json.loads(path.read_text())
        return cls(config=Config(**d.pop("config")), **d)


class LocalPool:
    def __init__(self, config: Config):
        self.c = config
        self.dir = CACHE / "pool" / config.name
        self.state_path = self.dir / "state.json"
        self.sock = self.dir / "haproxy.sock"
        self.rt = Runtime(str(self.sock), BACKEND)
        self.prefix = f"ampere-pool-{config.name}"
        self.seed = f"{self.prefix}-seed"
        self.key = CACHE / "machines/demo_ed25519"  # inventories/local names this key
        self.state = State.load(self.state_path) if self.state_path.exists() else State(config)
        self.c = self.state.config  # a running pool keeps the ports it was started with
        self.boot_timers: list[threading.Thread] = []
        self._boot_lock = threading.Lock()

    # ---- bookkeeping -------------------------------------------------------------------------------
    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=1))
        tmp.replace(self.state_path)

    @property
    def url(self) -> str:
        """The page's URL: HTTPS when the balancer terminates TLS."""
        if self.c.tls_cert:
            return f"https://127.0.0.1:{self.c.https_port}"
        return f"http://127.0.0.1:{self.c.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.c.port}"

    @property
    def tls_pem(self) -> Path:
        """The pool's own copy of the certificate (the state must not depend on where it came from)."""
        return self.dir / "tls.pem"

    def netns(self, slot: str) -> str:
        return f"{self.prefix}-{slot}"

    def node_connection(self, slot: str, timeout: float = 5) -> http.client.HTTPConnection:
        """A connection to the node in `slot` at its own address (NGINX on 127.0.0.1 in its
        namespace), not through HAProxy: what the node serves to itself (/metrics included)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.c.seed_web, timeout=timeout)
        with in_netns(self.netns(slot)):
            conn.connect()
        return conn

    def node_get(self, slot: str, path: str, timeout: float = 3) -> tuple[int, str]:
        """GET path on the node in `slot`; (0, reason) when nothing answers."""
        try:
            conn = self.node_connection(slot, timeout)
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                return r.status, r.read().decode(errors="replace")
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            return 0, repr(e)

    def slot_of(self, node_id: str) -> str:
        for slot, s in self.state.slots.items():
            if s["node"] == node_id:
                return slot
        raise PoolError(f"{node_id} is not in pool {self.c.name}")

    @staticmethod
    def preflight() -> None:
        """Fail before changing anything when a tool is missing or we are not root."""
        missing = [t for t in ("haproxy", "systemd-nspawn", "debootstrap", "ip", "nsenter", "ssh")
                   if not shutil.which(t)]
        if missing:
            raise PoolError(f"{', '.join(missing)} missing: run `make deps` (Debian packages)")
        if os.geteuid() != 0:
            raise PoolError("the local pool boots systemd containers and network namespaces: run as root")

    # ---- the seed and its images -------------------------------------------------------------------
    def seed_running(self) -> bool:
        pid = CACHE / "machines" / f"{self.seed}.pid"
        return pid.exists() and Path(f"/proc/{pid.read_text().strip()}").exists()

    def converge_seed(self, extra: dict | None = None) -> None:
        """Boot the seed if needed and run site.yml on it (inventories/local + the pool's vars)."""
        run(sys.executable, ROOT / "scripts/small_models.py", "smollm2", quiet=True)
        self.key.parent.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key)
        if not self.seed_running():
            run("bash", NSPAWN, "up", self.seed, self.c.seed_ssh, f"{self.key}.pub")
        evars = {"ansible_port": self.c.seed_ssh, "backend_port": self.c.seed_backend,
                 "web_port": self.c.seed_web, **(extra or {})}
        log(f"site.yml on the seed {self.seed} (first run compiles llama.cpp: minutes)")
        playbook = Path(sys.executable).parent / "ansible-playbook"
        run(playbook if playbook.exists() else "ansible-playbook", "site.yml", "-e", f"@{SEED_VARS}",
            "-e", json.dumps(evars), cwd=ROOT)

    def bake(self, name: str | None = None) -> str:
        """Snapshot the serving seed into a cleaned image; returns its name."""
        if not self.seed_running():
            raise PoolError(f"the seed {self.seed} is not running: `up` (or converge_seed) first")
        ready = f"http://127.0.0.1:{self.c.seed_web}/readyz"
        if http_status(ready) != 200:  # as bake.yml: only a seed that serves becomes an image
            raise PoolError(f"the seed does not serve ({ready} is not 200): fix it before baking")
        name = name or f"img-{len(self.state.images) + 1}"
        dest = self.dir / "images" / name
        tmp = dest.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        run("cp", "-a", "--reflink=auto", CACHE / "machines" / self.seed, tmp)
        # Root's authorized key goes too (clean.sh's default): pool nodes are never logged into.
        run("bash", CLEAN, tmp, quiet=True)
        self._apply_user_data(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        self.state.images.append(name)
        self.state.image = self.state.image or name
        self.save()
        log(f"image {name}: seed snapshot cleaned by image/clean.sh ({time.monotonic() - t0:.0f} s)")
        return name

    @staticmethod
    def _apply_user_data(root: Path) -> None:
        """What cloud-init does with the pool's user-data on OCI (the nodes here have no cloud-init):
        its write_files land in the image, and the units its runcmd starts must be enabled already."""
        import yaml  # ansible's dependency, in the venv
        doc = yaml.safe_load(USER_DATA.read_text())
        for f in doc.get("write_files", []):
            path = root / f["path"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f["content"])
            path.chmod(int(str(f.get("permissions", "0644")), 8))
        wants = root / "etc/systemd/system/multi-user.target.wants"
        for unit in ("ampere-llm.service", "nginx.service"):
            if not (wants / unit).is_symlink():  # links point at /etc/...: inside the image, not here
                raise PoolError(f"{unit} is not enabled in the seed: site.yml did not finish on it")

    # ---- HAProxy -----------------------------------------------------------------------------------
    def haproxy_config(self) -> str:
        """The balancer role's haproxy.cfg.j2 with this pool's values: what `make demo` runs is what
        the role deploys. Here HAProxy is a plain root process (its servers sit in network
        namespaces it enters per connection) logging to stderr, with one disabled slot per namespace."""
        c = self.c
        return render_balancer_config(
            balancer_bind_addresses=["127.0.0.1"], balancer_http_port=c.port, balancer_https_port=c.https_port,
            balancer_tls_certificate=str(self.tls_pem) if c.tls_cert else "",
            balancer_backend_port=c.seed_web, balancer_check_inter_ms=c.check_inter_ms,
            balancer_check_fastinter_ms=max(c.check_inter_ms // 2, 100),
            balancer_check_fall=c.fall, balancer_check_rise=c.rise,
            balancer_servers=[{"name": f"s{i}", "address": "127.0.0.1", "namespace": self.netns(f"s{i}"),
                               "disabled": True} for i in range(1, c.slots + 1)],
            balancer_runtime_socket=str(self.sock), balancer_log_target="stderr format short",
            balancer_drop_privileges=False,
            ansible_managed=f"Rendered by pool/local.py for pool {c.name} from the balancer role's template")

    def haproxy_pid(self) -> int | None:
        p = self.dir / "haproxy.pid"
        if p.exists():
            pid = int(p.read_text())
            if Path(f"/proc/{pid}").exists():
                return pid
        return None

    def start_haproxy(self) -> None:
        if self.haproxy_pid():
            return
        for i in range(1, self.c.slots + 1):  # the namespaces must exist when HAProxy reads its config
            ns = self.netns(f"s{i}")
            if not Path(f"/run/netns/{ns}").exists():
                run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        if self.c.tls_cert and Path(self.c.tls_cert).resolve() != self.tls_pem:
            self.tls_pem.write_bytes(Path(self.c.tls_cert).read_bytes())
            self.tls_pem.chmod(0o600)
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(self.haproxy_config())
        run("haproxy", "-c", "-q", "-f", cfg, quiet=True)
        for port in (self.c.port, self.c.https_port) if self.c.tls_cert else (self.c.port,):
            with socket.socket() as s:  # a clear message instead of HAProxy's bind error
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise PoolError(f"127.0.0.1:{port} is taken: choose another balancer port (--port, --https-port)")
        logf = open(self.dir / "haproxy.log", "ab")
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        (self.dir / "haproxy.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + 10
        while not self.sock.exists() or http_status(self.http_url + "/readyz", 1) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PoolError(f"haproxy did not start: {(self.dir / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.1)
        log(f"HAProxy on {self.url} ({self.c.slots} slots, checks every {self.c.check_inter_ms} ms on /readyz)")

    def admin(self, command: str) -> str:
        """One command on HAProxy's runtime API (the unix socket)."""
        try:
            return self.rt.command(command)
        except HAProxyError as e:
            raise PoolError(str(e)) from None

    def stats(self) -> dict[str, dict]:
        """Slot -> HAProxy's `show stat` row (status UP/DOWN/DRAIN/MAINT, scur = open requests, ...)."""
        try:
            return self.rt.stats()
        except HAProxyError as e:
            raise PoolError(str(e)) from None

    # ---- nodes ---------------------------------------------------------------------------------------
    def add_node(self, image: str) -> Node:
        free = [f"s{i}" for i in range(1, self.c.slots + 1) if f"s{i}" not in self.state.slots]
        if not free:
            raise PoolError(f"all {self.c.slots} balancer slots are taken")
        if image not in self.state.images:
            raise PoolError(f"no image {image!r} (images: {self.state.images})")
        slot = free[0]
        self.state.counter += 1
        name = f"{self.prefix}-n{self.state.counter}"
        self.state.slots[slot] = {"node": name, "image": image}
        self.save()
        t0 = time.monotonic()
        run("bash", NSPAWN, "boot", name, self.dir / "images" / image, self.netns(slot))
        timer = threading.Thread(target=self._time_boot, args=(name, slot, t0, time.monotonic()), daemon=True)
        timer.start()
        self.boot_timers.append(timer)
        # The node enters as DOWN and serves only after `rise` passed checks of its /readyz.
        try:
            self.rt.enter_checked(slot)
        except HAProxyError as e:
            raise PoolError(str(e)) from None
        return Node(name, image)

    def _time_boot(self, name: str, slot: str, t0: float, t_booted: float, timeout: float = 300) -> None:
        """Boot-to-ready of a new node, read at the node itself: container start (t0) -> systemd
        up -> /readyz 200 (model loaded, warm-up generation done) -> first token of a one-token
        stream. Logged and appended to boot.jsonl (pool_bench reports it)."""
        rec = {"node": name, "booted_s": round(t_booted - t0, 2), "ready_s": None, "first_token_s": None}
        while time.monotonic() - t0 < timeout and self.state.slots.get(slot, {}).get("node") == name:
            if self.node_get(slot, "/readyz", 2)[0] == 200:
                rec["ready_s"] = round(time.monotonic() - t0, 2)
                break
            time.sleep(0.2)
        if rec["ready_s"] is not None:
            try:
                conn = self.node_connection(slot, timeout=60)
                conn.request("POST", "/generate", json.dumps({"prompt": "Hello", "max_tokens": 1}),
                             {"Content-Type": "application/json", "Accept": "text/event-stream"})
                r = conn.getresponse()
                for events in iter_reads(r) if r.status == 200 else []:
                    if any(e.name == "message" and "token" in e.json() for e in events):
                        rec["first_token_s"] = round(time.monotonic() - t0, 2)
                        break
                conn.close()
            except (OSError, http.client.HTTPException, ValueError):
                pass
        log(f"{name}: container up {rec['booted_s']} s, /readyz 200 at {rec['ready_s']} s, "
            f"first token at {rec['first_token_s']} s after its start")
        with self._boot_lock, open(self.dir / "boot.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def wait_boot_times(self, timeout: float = 300) -> None:
        """Until every node started by this process has logged its boot-to-ready time."""
        for t in self.boot_timers:
            t.join(timeout)

    def boot_times(self) -> list[dict]:
        path = self.dir / "boot.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def remove_node(self, node_id: str) -> None:
        slot = self.slot_of(node_id)
        if self.haproxy_pid():
            self.admin(f"set server {BACKEND}/{slot} state maint")
        run("bash", NSPAWN, "down", node_id)
        del self.state.slots[slot]
        self.save()

    def wait_healthy(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while len(LocalProvider(self).healthy()) < count:
            if time.monotonic() > deadline:
                raise PoolError(f"fewer than {count} healthy nodes after {timeout:.0f} s: {self.status()}")
            time.sleep(0.5)

    def exec_in(self, node_id: str, *cmd, check=True) -> subprocess.CompletedProcess:
        return run("bash", NSPAWN, "exec", node_id, *cmd, check=check, quiet=True)

    def status(self) -> str:
        rows = []
        stats = self.stats() if self.haproxy_pid() else {}
        for slot in sorted(self.state.slots, key=lambda s: int(s[1:])):
            s, st = self.state.slots[slot], stats.get(slot, {})
            rows.append(f"{slot} {s['node']} image={s['image']} status={st.get('status', '?')} "
                        f"open={st.get('scur', '?')} served={st.get('stot', '?')}")
        return "\n".join(rows) or "(no nodes)"

    # ---- the whole pool ------------------------------------------------------------------------------
    def up(self, nodes: int = 2) -> None:
        self.preflight()
        if nodes < 1 or nodes > self.c.slots - 1:
            raise PoolError(f"--nodes must be 1..{self.c.slots - 1} (one slot stays free for roll-outs)")
        self.save()
        self.start_haproxy()
        if not self.state.images:
            self.converge_seed()
            self.bake()
        missing = nodes - len(self.state.slots)
        for _ in range(max(0, missing)):
            self.add_node(self.state.image)
        self.wait_healthy(nodes)
        self.wait_boot_times()

    def down(self) -> None:
        """Everything this pool started, whatever state it is in (also after a failed run)."""
        for slot in list(self.state.slots):
            run("bash", NSPAWN, "down", self.state.slots[slot]["node"], check=False)
        # Nodes of a crashed run that the state file never recorded.
        machines = CACHE / "machines"
        for pidfile in machines.glob(f"{self.prefix}-*.pid") if machines.exists() else []:
            run("bash", NSPAWN, "down", pidfile.name[:-4], check=False)
        pid = self.haproxy_pid()
        if pid:
            os.kill(pid, 15)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, 9)
        for ns in Path("/run/netns").glob(f"{self.prefix}-s*") if Path("/run/netns").exists() else []:
            run("ip", "netns", "del", ns.name, check=False)
        run("bash", NSPAWN, "down", self.seed, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalProvider:
    """rollout.Provider for a LocalPool: nodes are containers, health is what HAProxy's checks say."""

    def __init__(self, pool: LocalPool):
        self.pool = pool

    def nodes(self) -> list[Node]:
        return [Node(s["node"], s["image"]) for s in self.pool.state.slots.values()]

    def healthy(self) -> set[str]:
        stats = self.pool.stats()
        # DRAIN is a node that passes its checks but gets no new requests: still healthy.
        return {s["node"] for slot, s in self.pool.state.slots.items()
                if stats.get(slot, {}).get("status") in ("UP", "DRAIN")}

    def grow(self, image: str, count: int) -> list[Node]:
        self.use_image(image)
        return [self.pool.add_node(image) for _ in range(count)]

    def use_image(self, image: str) -> None:
        self.pool.state.image = image
        self.pool.save()

    def drain(self, node: Node) -> None:
        self.pool.rt.drain(self.pool.slot_of(node.id))

    def undrain(self, node: Node) -> None:
        self.pool.rt.ready(self.pool.slot_of(node.id))

    def in_flight(self, node: Node) -> int | None:
        return int(self.pool.stats()[self.pool.slot_of(node.id)]["scur"] or 0)

    def remove(self, node: Node) -> None:
        self.pool.remove_node(node.id)


def roll(pool: LocalPool, image: str, batch_size: int = 1, health_timeout: float = 180,
         drain_timeout: float = 60, poll: float = 0.5) -> list[dict]:
    """Rolling replacement of every node to `image` by the shared algorithm (rollout.py)."""
    provider = LocalProvider(pool)
    p = plan(provider.nodes(), provider.healthy(), image, batch_size)
    r = Rollout(provider, health_timeout=health_timeout, drain_timeout=drain_timeout, poll=poll,
                log=lambda m: log(f"rollout: {m}"))
    return r.run(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="demo", help="pool name (state in $AMPERE_LLM_CACHE/pool/NAME)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="seed -> image -> nodes -> HAProxy; prints the page's URL")
    up.add_argument("--nodes", type=int, default=2)
    for opt in ("port", "https_port", "seed_ssh", "seed_backend", "seed_web"):
        up.add_argument("--" + opt.replace("_", "-"), type=int, default=getattr(Config, opt))
    up.add_argument("--tls-cert", metavar="PEM", help="certificate chain + key: HTTPS on --https-port, "
                    "HTTP on --port redirects to it")
    bake = sub.add_parser("bake", help="new image from the seed")
    bake.add_argument("--converge", nargs="*", default=None, metavar="KEY=VALUE",
                      help="re-run site.yml on the seed with these vars first")
    rl = sub.add_parser("roll", help="replace every node with one booted from IMAGE")
    rl.add_argument("image")
    rl.add_argument("--batch-size", type=int, default=1)
    au = sub.add_parser("autoscale", help="grow and shrink the pool on its nodes' demand (pool/autoscale.py; "
                        "thresholds from playbooks/vars/demand.yml) until Ctrl-C")
    au.add_argument("--min", type=int, default=1)
    au.add_argument("--max", type=int, default=2, help="nodes at most (1 thread each: 2 fill this box's cores)")
    au.add_argument("--window", type=float, default=10, help="seconds the mean is taken over (OCI: 60)")
    au.add_argument("--cooldown", type=float, default=20, help="seconds after an action (OCI: >= 300)")
    au.add_argument("--poll", type=float, default=1)
    sub.add_parser("status")
    sub.add_parser("down")
    a = ap.parse_args(argv)

    cfg = Config(name=a.name)
    if a.cmd == "up":
        cfg = Config(a.name, a.port, a.seed_ssh, a.seed_backend, a.seed_web,
                     tls_cert=a.tls_cert and str(Path(a.tls_cert).resolve()), https_port=a.https_port)
    pool = LocalPool(cfg)
    if a.cmd != "up" and a.cmd != "down" and not pool.state_path.exists():
        raise SystemExit(f"local.py: no pool {a.name!r} (start it with `up`)")
    try:
        if a.cmd == "up":
            pool.up(a.nodes)
            print(f"{pool.status()}\nPage (through HAProxy): {pool.url}/")
        elif a.cmd == "bake":
            if a.converge is not None:
                pool.converge_seed(dict(kv.split("=", 1) for kv in a.converge))
            print(pool.bake())
        elif a.cmd == "roll":
            roll(pool, a.image, a.batch_size)
            print(pool.status())
        elif a.cmd == "autoscale":
            from autoscale import Autoscaler, Policy  # pool/autoscale.py imports this module
            policy = Policy.load(window=a.window, cooldown=a.cooldown, min_nodes=a.min, max_nodes=a.max)
            log(f"autoscaling pool {a.name}: {policy} (Ctrl-C ends it; the pool stays as it is)")
            try:
                Autoscaler(pool, policy, poll=a.poll).run()
            except KeyboardInterrupt:
                pass
        elif a.cmd == "status":
            print(pool.status())
        elif a.cmd == "down":
            pool.down()
            log(f"pool {a.name} removed (nodes, seed, HAProxy, namespaces, images)")
    except (PoolError, RolloutFailed, HAProxyError, ValueError) as e:
        print(f"local.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run as the module `local`, not `__main__`: pool/autoscale.py imports `local`, and its
    # PoolError must be the one this process raises and catches.
    from local import main as _main
    sys.exit(_main())
