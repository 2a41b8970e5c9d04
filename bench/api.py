#!/usr/bin/env python3
"""The admin API as a benchmark: `keel daemon` against Firecracker's / Cloud Hypervisor's API.

Every VMM boots Keel's x86_64 test guest (guest/testguest), 1 vCPU, 32 MiB, no devices,
through its API. Figures (bench/README.md, "Admin API"):

  1. API request -> the guest's first serial line (`keeltest: boot ok`): create + start,
     and start of a VM created before; the API calls' own round trips;
  2. the daemon's RSS idle and with FLEET VMs running, and the VMM processes' summed RSS
     and PSS (one process per VM for every VMM here);
  3. VMs started per second: FLEET VMs created and started back to back by one client.

Invoked by `bash bench/run.sh api` (and by the full `bash bench/run.sh`).

Environment:
  BENCH_QUICK=1        smoke mode (well under a minute): 3 latency runs, one round of 50 VMs,
                       output in bench/out-quick/
  BENCH_RUNS=N         latency runs per VMM and variant (default 15; quick 3)
  BENCH_API_VMS=N      VMs per start-rate round (default 50)
  BENCH_API_ROUNDS=N   start-rate rounds (fresh daemon each; default 3; quick 1)
  BENCH_OUT=DIR        output directory (default bench/, quick bench/out-quick/)
  KEEL=PATH            keel binary (default ${CARGO_TARGET_DIR:-target}/release/keel)
  KEELTEST_ELF=PATH    the guest (default the release build of guest/testguest)
  FIRECRACKER=PATH     also measure Firecracker through its API socket (never built here)
  CLOUD_HYPERVISOR=PATH  also measure Cloud Hypervisor through its API socket (idem)

Writes API.md and api.json in the output directory. Exit status: 0 when every run of every
measured VMM passed, 1 otherwise, 2 on a setup problem.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import OUT, QUICK, ROOT, env_int, fmt, kvm_kind, log, machine_facts

RUNS = env_int("BENCH_RUNS", 3 if QUICK else 15)
FLEET = env_int("BENCH_API_VMS", 50)
ROUNDS = env_int("BENCH_API_ROUNDS", 1 if QUICK else 3)
MEM_MIB = 32
CMDLINE = "keeltest=halt"  # prints its lines, then halts with interrupts off: no CPU use
FIRST = b"keeltest: "  # every guest line starts so; the first is `keeltest: boot ok`
BOOT_TIMEOUT_S = 30.0
SETTLE_S = 1.0  # before an RSS sample
POLL_S = 0.001


# --------------------------------------------------------------------------- HTTP over a Unix socket


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def call(
    sock: Path, method: str, path: str, body: object = None, headers: dict | None = None
) -> tuple[int, str, float]:
    """One request on a new connection: (status, body, seconds from connect to the whole answer)."""
    data = json.dumps(body).encode() if body is not None else b""
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "close"}
    hdrs.update(headers or {})
    t0 = time.monotonic()
    conn = UnixHTTPConnection(sock)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        return resp.status, text, time.monotonic() - t0
    finally:
        conn.close()


def wait_socket(sock: Path, proc: subprocess.Popen, limit: float) -> str:
    """Waits until `sock` accepts connections; an error message, or "" when it does."""
    until = time.monotonic() + limit
    while time.monotonic() < until:
        if proc.poll() is not None:
            return f"exited ({proc.returncode}) before serving {sock}"
        if sock.exists():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(sock))
                return ""
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(POLL_S)
    return f"{sock} not served within {limit:.0f} s"


# --------------------------------------------------------------------------- serial lines and memory


def has_first_line(path: Path) -> bool:
    """Whether `path` holds a complete guest line (other lines, a VMM's log, are skipped)."""
    try:
        if path.stat().st_size == 0:
            return False
        data = path.read_bytes()
    except OSError:
        return False
    return any(line.startswith(FIRST) for line in data.split(b"\n")[:-1])


def wait_first_line(path: Path, t0: float, alive=None) -> tuple[float | None, str]:
    """Seconds from `t0` until `path` holds the guest's first line (polled every ms)."""
    until = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < until:
        if has_first_line(path):
            return time.monotonic() - t0, ""
        if alive is not None and not alive():
            return None, "the VMM ended before the guest's first line"
        time.sleep(POLL_S)
    return None, f"no guest line in {path.name} within {BOOT_TIMEOUT_S:.0f} s"


class FirstLines:
    """A thread that timestamps the first guest line of many files (a start-rate round)."""

    def __init__(self):
        self.pending: dict[str, Path] = {}
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, name: str, path: Path) -> None:
        with self.lock:
            self.pending[name] = path

    def _run(self) -> None:
        while not self.stop:
            with self.lock:
                items = list(self.pending.items())
            for name, path in items:
                if has_first_line(path):
                    t = time.monotonic()
                    with self.lock:
                        self.seen[name] = t
                        del self.pending[name]
            time.sleep(POLL_S)

    def wait(self, count: int) -> bool:
        until = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < until:
            with self.lock:
                if len(self.seen) >= count:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.stop = True
        self.thread.join()


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (helpers a VMM may fork)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def memory_kib(pids: list[int], tree: bool = True) -> tuple[int, int, int]:
    """(summed VmRSS, summed Pss, processes read) of `pids` (with `tree`: and their descendants)."""
    rss = pss = n = 0
    for pid in {d for p in pids for d in (descendants(p) if tree else [p])}:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        pss += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
        n += 1
    return rss, pss, n


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(")", 1)[1].strip().startswith("Z")


# --------------------------------------------------------------------------- figures


class Figures:
    """Values per figure and VMM, with the failures."""

    def __init__(self):
        self.values: dict[str, dict[str, list[float]]] = {}
        self.failures: dict[str, dict[str, list[str]]] = {}

    def add(self, key: str, vmm: str, value: float | None, error: str = "") -> None:
        if value is None:
            self.failures.setdefault(key, {}).setdefault(vmm, []).append(error or "no value")
        else:
            self.values.setdefault(key, {}).setdefault(vmm, []).append(value)

    def na(self, key: str, vmm: str, why: str) -> None:
        self.failures.setdefault(key, {}).setdefault(vmm, []).append(f"not applicable: {why}")


FIGS = Figures()
# key, title, unit, better
TABLE = [
    ("create_start_ms", "create + start request → first serial line", "ms", "lower"),
    ("start_ms", "start request (VM created before) → first serial line", "ms", "lower"),
    ("spawn_ms", "VMM process spawn → first serial line (configured through the API)", "ms", "lower"),
    ("create_call_ms", "create call round trip", "ms", "lower"),
    ("start_call_ms", "start call round trip", "ms", "lower"),
    ("daemon_idle_rss_mib", "daemon RSS, idle (no VM)", "MiB", "lower"),
    ("daemon_fleet_rss_mib", f"daemon RSS, {FLEET} VMs running", "MiB", "lower"),
    ("vmm_fleet_rss_mib", f"VMM processes, summed RSS, {FLEET} VMs running", "MiB", "lower"),
    ("vmm_fleet_pss_mib", f"VMM processes, summed PSS, {FLEET} VMs running", "MiB", "lower"),
    ("total_fleet_pss_mib", f"everything (daemon + VMMs), summed PSS, {FLEET} VMs", "MiB", "lower"),
    ("rate_vms_s", f"start rate: {FLEET} VMs, first request → last first serial line", "VMs/s", "higher"),
    ("api_rate_vms_s", f"API rate: {FLEET} VMs, first request → last start answered", "VMs/s", "higher"),
    ("fleet_first_line_ms", "start-rate round: each VM's first request → its first line", "ms", "lower"),
    ("stop_all_ms", f"stop all {FLEET} (daemon SIGTERM → exit; others: SIGKILL → all reaped)", "ms", "lower"),
]


# --------------------------------------------------------------------------- Keel


class KeelDaemon:
    name = "Keel"

    def __init__(self, keel: str, elf: Path, work: Path, tag: str):
        self.keel, self.elf = keel, elf
        self.dir = work / f"keel-{tag}"
        self.dir.mkdir()
        self.state = self.dir / "state"
        self.sock = self.state / "keel.sock"
        (self.dir / "system.toml").write_text(
            "\n".join(
                [
                    "[system]",
                    'name = "apibench"',
                    # A system needs a VM: two pool slots (`start = false`, never started here),
                    # each holding the start right on the other, so the daemon runs no VMM.
                    *(
                        line
                        for me, other in (("slot-a", "slot-b"), ("slot-b", "slot-a"))
                        for line in (
                            "[[vm]]",
                            f'name = "{me}"',
                            'arch = "x86_64"',
                            f'memory = "{MEM_MIB}M"',
                            f"kernel = {json.dumps(str(elf))}",
                            f'cmdline = "{CMDLINE}"',
                            "start = false",
                            "[[vm.control]]",
                            f'vm = "{other}"',
                            'rights = ["start"]',
                        )
                    ),
                    "[limits]",
                    f"max_vms = {FLEET + 4}",
                    f'memory = "{(FLEET + 4) * MEM_MIB}M"',
                    f"vcpus = {FLEET + 4}",
                    f"kernels = [{json.dumps(str(elf))}]",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen | None = None
        self.token = ""

    def start(self) -> str:
        with open(self.dir / "daemon.log", "wb") as err:
            self.proc = subprocess.Popen(
                [self.keel, "daemon", "system.toml", "--log-level", "warn", "--state-dir", str(self.state)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        error = wait_socket(self.sock, self.proc, 10)
        if error:
            return f"keel daemon: {error}: {self.log_tail()}"
        until = time.monotonic() + 5
        while not (self.state / "admin.token").exists() and time.monotonic() < until:
            time.sleep(POLL_S)
        try:
            self.token = (self.state / "admin.token").read_text().strip()
        except OSError as e:
            return f"keel daemon: no admin.token: {e}"
        return ""

    def log_tail(self) -> str:
        try:
            return " ".join((self.dir / "daemon.log").read_text(errors="replace").strip().splitlines()[-2:])
        except OSError:
            return ""

    def request(self, method: str, path: str, body: object = None) -> tuple[int, str, float]:
        return call(self.sock, method, path, body, {"Authorization": f"Bearer {self.token}"})

    def create(self, vm: str) -> tuple[str, float]:
        body = {"name": vm, "kernel": str(self.elf), "cmdline": CMDLINE, "memory_mib": MEM_MIB}
        status, text, s = self.request("POST", "/v1/vms", body)
        return ("" if status == 201 else f"create {vm}: HTTP {status} {text.strip()}"), s

    def put(self, vm: str, action: str) -> tuple[str, float]:
        status, text, s = self.request("PUT", f"/v1/vms/{vm}/{action}")
        return ("" if status == 200 else f"{action} {vm}: HTTP {status} {text.strip()}"), s

    def delete(self, vm: str) -> str:
        status, text, _ = self.request("DELETE", f"/v1/vms/{vm}")
        return "" if status == 204 else f"delete {vm}: HTTP {status} {text.strip()}"

    def serial(self, vm: str) -> Path:
        return self.state / "vms" / vm / "serial.log"

    def vms(self) -> list[dict]:
        status, text, _ = self.request("GET", "/v1/vms")
        return json.loads(text) if status == 200 else []

    def terminate(self) -> float | None:
        """SIGTERM (the daemon stops every VM first); seconds until it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        return time.monotonic() - t0

    def version(self) -> str:
        out = subprocess.run([self.keel, "--version"], capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        return f"{out} (`keel daemon`), binary {self.keel}; work tree at commit {commit or '?'}"


def keel_latency(d: KeelDaemon, i: int) -> list[str]:
    """One create+start run and one start-only run; the VMs are stopped and deleted after."""
    errors = []
    vm = f"cs-{i}"
    t0 = time.monotonic()
    err, create_s = d.create(vm)
    err = err or d.put(vm, "start")[0]
    s, why = (None, err) if err else wait_first_line(d.serial(vm), t0)
    FIGS.add("create_start_ms", "Keel", s * 1e3 if s is not None else None, why)
    FIGS.add("create_call_ms", "Keel", None if err else create_s * 1e3, err)
    errors += [f"create+start run {i + 1}: {why}"] if s is None else []
    errors += [e for e in (d.put(vm, "stop")[0], d.delete(vm)) if e and not err]

    vm = f"st-{i}"
    err, _ = d.create(vm)
    t0 = time.monotonic()
    if not err:
        err, start_s = d.put(vm, "start")
    s, why = (None, err) if err else wait_first_line(d.serial(vm), t0)
    FIGS.add("start_ms", "Keel", s * 1e3 if s is not None else None, why)
    FIGS.add("start_call_ms", "Keel", None if err else start_s * 1e3, err)
    errors += [f"start run {i + 1}: {why}"] if s is None else []
    errors += [e for e in (d.put(vm, "stop")[0], d.delete(vm)) if e and not err]
    return errors


def keel_fleet(keel: str, elf: Path, work: Path, rnd: int) -> list[str]:
    """A fresh daemon: idle RSS; FLEET VMs created+started back to back; RSS; SIGTERM."""
    d = KeelDaemon(keel, elf, work, f"fleet{rnd}")
    error = d.start()
    if error:
        for key in ("daemon_idle_rss_mib", "daemon_fleet_rss_mib", "rate_vms_s"):
            FIGS.add(key, "Keel", None, error)
        return [error]
    errors = []
    try:
        time.sleep(SETTLE_S)
        rss, pss, _ = memory_kib([d.proc.pid], tree=False)
        FIGS.add("daemon_idle_rss_mib", "Keel", rss / 1024)
        idle_pss = pss
        watch = FirstLines()
        starts: dict[str, float] = {}
        t0 = time.monotonic()
        for n in range(FLEET):
            vm = f"vm-{n}"
            starts[vm] = time.monotonic()
            err = d.create(vm)[0] or d.put(vm, "start")[0]
            if err:
                errors.append(err)
                break
            watch.add(vm, d.serial(vm))
        t_api = time.monotonic()
        all_up = not errors and watch.wait(FLEET)
        watch.close()
        if not all_up and not errors:
            errors.append(f"{FLEET - len(watch.seen)} of {FLEET} VMs printed no line within {BOOT_TIMEOUT_S:.0f} s")
        why = "; ".join(errors)
        t_last = max(watch.seen.values()) if watch.seen else None
        FIGS.add("rate_vms_s", "Keel", FLEET / (t_last - t0) if all_up else None, why)
        FIGS.add("api_rate_vms_s", "Keel", FLEET / (t_api - t0) if not errors else None, why)
        for vm, t in watch.seen.items():
            FIGS.add("fleet_first_line_ms", "Keel", (t - starts[vm]) * 1e3)
        time.sleep(SETTLE_S)
        pids = [v["pid"] for v in d.vms() if v.get("state") == "running" and v.get("pid")]
        if len(pids) != FLEET and not errors:
            errors.append(f"{len(pids)} of {FLEET} VMs running after the round")
        why = "; ".join(errors)
        rss, pss, _ = memory_kib([d.proc.pid], tree=False)
        FIGS.add("daemon_fleet_rss_mib", "Keel", rss / 1024 if not errors else None, why)
        vrss, vpss, nproc = memory_kib(pids)
        FIGS.add("vmm_fleet_rss_mib", "Keel", vrss / 1024 if not errors else None, why)
        FIGS.add("vmm_fleet_pss_mib", "Keel", vpss / 1024 if not errors else None, why)
        FIGS.add("total_fleet_pss_mib", "Keel", (vpss + pss) / 1024 if not errors else None, why)
        FLEET_FACTS.setdefault("Keel", []).append(
            {"vmm_processes": nproc, "daemon_idle_pss_kib": idle_pss, "daemon_fleet_pss_kib": pss}
        )
    finally:
        stop_s = d.terminate()
        left = [p for p in pids_recorded(d) if alive(p)]
        if left:
            errors.append(f"VMMs {left} outlived the daemon")
            for p in left:
                os.kill(p, signal.SIGKILL)
        FIGS.add("stop_all_ms", "Keel", stop_s * 1e3 if stop_s is not None and not errors else None, "; ".join(errors))
    return errors


def pids_recorded(d: KeelDaemon) -> list[int]:
    out = []
    for f in (d.state / "vms").glob("*/vmm.json"):
        try:
            out.append(int(json.loads(f.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            pass
    return out


FLEET_FACTS: dict[str, list[dict]] = {}


# --------------------------------------------------------------------------- one process per VM


class PeerVm:
    """One Firecracker or Cloud Hypervisor process, configured and booted through its API socket."""

    name = "?"

    def __init__(self, path: str, elf: Path, work: Path, tag: str):
        self.path, self.elf = path, elf
        self.dir = work / tag
        self.dir.mkdir()
        self.sock = self.dir / "api.sock"
        self.out = self.dir / "stdout"  # the serial port (and maybe the VMM's log)
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def configure(self) -> str:
        raise NotImplementedError

    def boot(self) -> tuple[str, float]:
        raise NotImplementedError

    def spawn(self) -> str:
        with open(self.out, "wb") as out, open(self.dir / "stderr", "wb") as err:
            self.proc = subprocess.Popen(self.argv(), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        error = wait_socket(self.sock, self.proc, 10)
        return f"{self.name}: {error}: {self.tail()}" if error else ""

    def tail(self) -> str:
        text = ""
        for f in ("stderr", "stdout"):
            try:
                text += (self.dir / f).read_text(errors="replace")
            except OSError:
                pass
        return " ".join(text.strip().splitlines()[-2:])[:300]

    def put(self, path: str, body: object) -> tuple[str, float]:
        status, text, s = call(self.sock, "PUT", path, body)
        ok = 200 <= status < 300
        return ("" if ok else f"{self.name} PUT {path}: HTTP {status} {text.strip()[:200]}"), s

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def version(self) -> str:
        out = subprocess.run([self.path, "--version"], capture_output=True, text=True).stdout
        return (out.splitlines()[0].strip() if out else "?") + f", binary {self.path}"


class Firecracker(PeerVm):
    name = "Firecracker"

    def argv(self) -> list[str]:
        return [self.path, "--api-sock", str(self.sock), "--level", "Warning"]

    def configure(self) -> str:
        boot = {"kernel_image_path": str(self.elf), "boot_args": CMDLINE}
        machine = {"vcpu_count": 1, "mem_size_mib": MEM_MIB}
        return self.put("/boot-source", boot)[0] or self.put("/machine-config", machine)[0]

    def boot(self) -> tuple[str, float]:
        return self.put("/actions", {"action_type": "InstanceStart"})


class CloudHypervisor(PeerVm):
    """Untested here (not installed on the development machine)."""

    name = "Cloud Hypervisor"

    def argv(self) -> list[str]:
        return [self.path, "--api-socket", f"path={self.sock}"]

    def configure(self) -> str:
        config = {
            "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
            "memory": {"size": MEM_MIB << 20},
            "payload": {"kernel": str(self.elf), "cmdline": CMDLINE},
            "serial": {"mode": "Tty"},
            "console": {"mode": "Off"},
        }
        return self.put("/api/v1/vm.create", config)[0]

    def boot(self) -> tuple[str, float]:
        return self.put("/api/v1/vm.boot", None)


def peer_latency(cls, path: str, elf: Path, work: Path, i: int) -> list[str]:
    """Spawn, configure, boot: from the spawn and from the boot request to the first line."""
    vm = cls(path, elf, work, f"{cls.name.split()[0].lower()}-lat-{i}")
    t_spawn = time.monotonic()
    try:
        err = vm.spawn() or vm.configure()
        t_boot = time.monotonic()
        if not err:
            err, boot_s = vm.boot()
        s, why = (None, err) if err else wait_first_line(vm.out, t_spawn, vm.running)
        if s is None and not err:
            why = f"{why}: {vm.tail()}"
        FIGS.add("spawn_ms", vm.name, s * 1e3 if s is not None else None, why)
        FIGS.add("start_ms", vm.name, (s - (t_boot - t_spawn)) * 1e3 if s is not None else None, why)
        FIGS.add("start_call_ms", vm.name, boot_s * 1e3 if not err else None, err)
        return [] if s is not None else [f"latency run {i + 1}: {why}"]
    finally:
        vm.kill()


def peer_fleet(cls, path: str, elf: Path, work: Path, rnd: int) -> list[str]:
    """FLEET processes spawned, configured and booted back to back; their RSS; SIGKILL."""
    vms = []
    errors: list[str] = []
    name = cls.name
    watch = FirstLines()
    starts: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        for n in range(FLEET):
            vm = cls(path, elf, work, f"{name.split()[0].lower()}-fleet{rnd}-{n}")
            vms.append(vm)
            starts[vm.dir.name] = time.monotonic()
            err = vm.spawn() or vm.configure() or vm.boot()[0]
            if err:
                errors.append(err)
                break
            watch.add(vm.dir.name, vm.out)
        t_api = time.monotonic()
        all_up = not errors and watch.wait(FLEET)
        if not all_up and not errors:
            errors.append(f"{FLEET - len(watch.seen)} of {FLEET} VMs printed no line: {vms[-1].tail()}")
        why = "; ".join(errors)
        t_last = max(watch.seen.values()) if watch.seen else None
        FIGS.add("rate_vms_s", name, FLEET / (t_last - t0) if all_up else None, why)
        FIGS.add("api_rate_vms_s", name, FLEET / (t_api - t0) if not errors else None, why)
        for vm_name, t in watch.seen.items():
            FIGS.add("fleet_first_line_ms", name, (t - starts[vm_name]) * 1e3)
        time.sleep(SETTLE_S)
        running = [vm.proc.pid for vm in vms if vm.running()]
        if len(running) != FLEET and not errors:
            errors.append(f"{len(running)} of {FLEET} {name} processes running after the round")
        why = "; ".join(errors)
        rss, pss, nproc = memory_kib(running)
        FIGS.add("vmm_fleet_rss_mib", name, rss / 1024 if not errors else None, why)
        FIGS.add("vmm_fleet_pss_mib", name, pss / 1024 if not errors else None, why)
        FIGS.add("total_fleet_pss_mib", name, pss / 1024 if not errors else None, why)
        FLEET_FACTS.setdefault(name, []).append({"vmm_processes": nproc})
    finally:
        watch.close()
        t_kill = time.monotonic()
        for vm in vms:
            if vm.proc is not None and vm.proc.poll() is None:
                vm.proc.kill()
        for vm in vms:
            vm.kill()
        FIGS.add("stop_all_ms", name, (time.monotonic() - t_kill) * 1e3 if not errors else None, "; ".join(errors))
    return errors


# --------------------------------------------------------------------------- output


def cell(key: str, vmm: str) -> str:
    vals = FIGS.values.get(key, {}).get(vmm, [])
    fails = FIGS.failures.get(key, {}).get(vmm, [])
    if vals:
        text = f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))}; {len(vals)})"
        return text + (f", {len(fails)} failed" if fails else "")
    if fails:
        if all(f.startswith("not applicable") for f in fails):
            return "n/a"
        return f"failed ({fails[0][:80]})"
    return "–"


def table(names: list[str]) -> list[str]:
    head = "| figure | unit | better | " + " | ".join(f"{n} median (min–max; n)" for n in names) + " |"
    rows = [head, "|" + "---|" * (3 + len(names))]
    for key, title, unit, better in TABLE:
        rows.append(f"| {title} | {unit} | {better} | " + " | ".join(cell(key, n) for n in names) + " |")
    return rows


def write_md(res: dict, names: list[str], skipped: dict[str, str]) -> None:
    m = res["machine"]
    ls, le = res["load_start"], res["load_end"]
    lines = [
        "# Admin API: benchmark results",
        "",
        f"Generated by `bash bench/run.sh api` ({res['mode']} mode; {res['runs']} latency runs per VMM and "
        f"variant, {res['rounds']} start-rate round(s) of {res['fleet']} VMs; {res['elapsed_s']:.0f} s). "
        "Raw data: `api.json`. What each figure means: bench/README.md, \"Admin API\".",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; kernel {m['kernel']}; KVM: **{m['kvm']}**",
    ]
    for n in names:
        lines.append(f"- {n}: {res['versions'].get(n, '?')}")
    for n, why in skipped.items():
        lines.append(f"- {n}: **not measured** ({why})")
    lines += [
        f"- date: {m['date']}",
        f"- load average (1/5/15 min) at start: {ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f}; at end: "
        f"{le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f}",
        f"- guest: `{CMDLINE}` ({MEM_MIB} MiB, 1 vCPU, no devices); first serial line = the first "
        "complete line starting `keeltest: ` (`keeltest: boot ok`), polled every 1 ms",
        "",
        *table(names),
        "",
    ]
    if res["failures"]:
        lines += ["Failures:", ""] + [f"- {f}" for f in res["failures"][:30]] + [""]
    (OUT / "API.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def main() -> int:
    elf = Path(
        os.environ.get("KEELTEST_ELF") or ROOT / "guest/testguest/target/x86_64-unknown-none/release/keel-testguest"
    )
    keel = os.environ.get("KEEL") or str(Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release/keel")
    problems = []
    if not elf.is_file():
        problems.append(f"guest {elf} missing (make testguest)")
    elif b"halt: halting" not in elf.read_bytes():
        problems.append(f"guest {elf} has no `halt` test: rebuild it (make testguest)")
    if not os.access(keel, os.X_OK):
        problems.append(f"keel {keel} missing (make build, or KEEL=)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        problems.append("/dev/kvm is not usable")
    peers: list[tuple[type, str]] = []
    skipped: dict[str, str] = {}
    for var, cls in (("FIRECRACKER", Firecracker), ("CLOUD_HYPERVISOR", CloudHypervisor)):
        path = os.environ.get(var)
        if not path:
            skipped[cls.name] = f"set `{var}=/path/to/{cls.name.lower().replace(' ', '-')}`"
        elif os.access(path, os.X_OK):
            peers.append((cls, path))
        else:
            problems.append(f"{var}={path} is not an executable")
    if problems:
        for p in problems:
            log(f"api: {p}")
        return 2
    names = ["Keel"] + [cls.name for cls, _ in peers]
    OUT.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.monotonic()
    log(
        f"api: {'quick' if QUICK else 'full'} run: {RUNS} latency runs, {ROUNDS} round(s) of {FLEET} VMs; "
        f"VMMs {', '.join(names)}; load average {load_start[0]:.2f}"
    )
    failures: list[str] = []
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="keel-apibench-") as tmp:
        work = Path(tmp)
        d = KeelDaemon(keel, elf, work, "latency")
        versions["Keel"] = d.version()
        for cls, path in peers:
            versions[cls.name] = cls(path, elf, work, f"version-{cls.name.split()[0]}").version()
        error = d.start()
        if error:
            log(f"api: {error}")
            return 1
        try:
            # Warm-up (not measured): binaries and the guest into the page cache.
            failures += [f"warm-up Keel: {e}" for e in keel_latency(d, -1)]
            for cls, path in peers:
                failures += [f"warm-up {cls.name}: {e}" for e in peer_latency(cls, path, elf, work, -1)]
            FIGS.values.clear()
            FIGS.failures.clear()
            for key in ("create_start_ms", "create_call_ms"):
                for cls, _ in peers:
                    FIGS.na(key, cls.name, "no create call: a process per VM, configured, then booted")
            for key in ("daemon_idle_rss_mib", "daemon_fleet_rss_mib"):
                for cls, _ in peers:
                    FIGS.na(key, cls.name, "no daemon")
            FIGS.na("spawn_ms", "Keel", "the daemon spawns the VMM")
            for i in range(RUNS):  # interleaved: Keel, Firecracker, ..., Keel, ...
                failures += [f"Keel {e}" for e in keel_latency(d, i)]
                for cls, path in peers:
                    failures += [f"{cls.name} {e}" for e in peer_latency(cls, path, elf, work, i)]
            log(f"api: latency runs done ({time.monotonic() - started:.0f} s)")
        finally:
            d.terminate()
        for rnd in range(ROUNDS):
            failures += [f"Keel round {rnd + 1}: {e}" for e in keel_fleet(keel, elf, work, rnd)]
            for cls, path in peers:
                failures += [f"{cls.name} round {rnd + 1}: {e}" for e in peer_fleet(cls, path, elf, work, rnd)]
            log(f"api: round {rnd + 1}/{ROUNDS} done ({time.monotonic() - started:.0f} s)")
    for f in failures:
        log(f"api: {f}")
    facts = machine_facts([])
    facts["kvm"] = kvm_kind()
    res = {
        "mode": "quick" if QUICK else "full",
        "runs": RUNS,
        "rounds": ROUNDS,
        "fleet": FLEET,
        "guest": {"cmdline": CMDLINE, "memory_mib": MEM_MIB, "vcpus": 1},
        "machine": facts,
        "versions": versions,
        "not_measured": skipped,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "elapsed_s": time.monotonic() - started,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "figures": {
            key: {
                "title": title,
                "unit": unit,
                "better": better,
                "values": FIGS.values.get(key, {}),
                "failures": FIGS.failures.get(key, {}),
            }
            for key, title, unit, better in TABLE
        },
        "fleet_facts": FLEET_FACTS,
        "failures": failures,
    }
    (OUT / "api.json").write_text(json.dumps(res, indent=1) + "\n")
    write_md(res, names, skipped)
    print("\n".join(table(names)))
    for n, why in skipped.items():
        print(f"{n}: not measured ({why})")
    log(f"api: wrote {OUT / 'API.md'} in {res['elapsed_s']:.0f} s")
    missing = [key for key, *_ in TABLE if not FIGS.values.get(key, {}).get("Keel") and key != "spawn_ms"]
    if failures or missing:
        log(f"api: {len(failures)} failures; Keel figures without a value: {', '.join(missing) or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
