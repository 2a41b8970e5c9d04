#!/usr/bin/env python3
"""Keel vs QEMU (and, when given, Firecracker / Cloud Hypervisor) on the same guest.

Runs Keel's x86_64 test guest (guest/testguest) under every VMM, interleaved
(A B A B ...), N runs each, and writes RESULTS.md, results.json and one PNG per
figure. Invoked by bench/run.sh; see bench/README.md.

Environment:
  BENCH_QUICK=1        smoke mode (< 2 min): few runs, small sizes, output in bench/out-quick/
  BENCH_RUNS=N         runs per VMM and figure (default 15; quick 3)
  BENCH_OUT=DIR        output directory (default bench/, quick bench/out-quick/)
  KEEL=PATH            keel binary (default ${CARGO_TARGET_DIR:-target}/release/keel)
  QEMU=PATH            qemu-system-x86_64 (default from PATH)
  KEELTEST_ELF=PATH    the guest (default the release build of guest/testguest)
  FIRECRACKER=PATH     also measure Firecracker (never downloaded or built here)
  CLOUD_HYPERVISOR=PATH  also measure Cloud Hypervisor (idem)
  BENCH_DROP_CACHES=1  drop the page cache before every blk run (default: warm cache)

`bench.py budget` (bash bench/run.sh budget) measures only the CPU-budget figure (Keel on
Linux: the CPU share a busy-looping guest gets at budgets of 10/25/50 % of a period), prints
its table and writes budget.json in the output directory; the full run includes it.

Exit status: 0 when every run passed and every figure has data for Keel and QEMU,
1 otherwise, 2 on a setup problem (missing binary, guest, ...).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        sys.exit(f"bench: {name}={value!r} is not an integer")
    if n < 1:
        sys.exit(f"bench: {name}={value!r} must be at least 1")
    return n


RUNS = env_int("BENCH_RUNS", 3 if QUICK else 30)
OUT = Path(os.environ.get("BENCH_OUT") or (ROOT / "bench" / ("out-quick" if QUICK else "")))
DROP_CACHES = os.environ.get("BENCH_DROP_CACHES", "") not in ("", "0")

# Workload sizes: (quick, full).
MEM_MIB = 128  # guest RAM for every figure except the start rate
BOOT_PAUSE_MS = 0
MEM_PAUSE_MS = 300
MMIO_READS = 2000 if QUICK else 10000
DISK_MIB = 32 if QUICK else 256
SEQ_REQUEST = "1M"
RAND_REQUESTS = 256 if QUICK else 2048
RATE_VMS = 4 if QUICK else 8
RATE_MEM_MIB = 32
RATE_RUNS = 2 if QUICK else max(3, RUNS // 2)
RUN_TIMEOUT_S = 60
BUDGET_PERCENTS = (10, 25, 50)  # placement.budget_us as a share of period_us
BUDGET_PERIOD_US = 100_000
BUDGET_SPIN_MS = 3000  # the guest busy-loops this long (`pause:<ms>`)
BUDGET_WINDOW_S = 2.0  # CPU time is sampled over this much of the loop
BUDGET_RUNS = 1 if QUICK else 3
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- VMMs


@dataclass
class Guest:
    """One guest configuration, VMM-independent."""

    tests: str
    mem_mib: int = MEM_MIB
    disk: Path | None = None
    vcpus: int = 1

    def cmdline(self) -> str:
        return f"keeltest={self.tests}"


class Vmm:
    """How to start one VMM on a Guest, and how to read its exit status."""

    name = "?"
    exits_itself = True  # False: the harness stops it after the verdict line
    has_mmio = True  # the guest finds virtio-mmio devices on its command line

    def __init__(self, path: str, elf: Path):
        self.path = path
        self.elf = elf

    def argv(self, guest: Guest, work: Path) -> list[str]:
        raise NotImplementedError

    def guest_code(self, status: int) -> int | None:
        """The guest's debug-exit code from the process's exit status (None if unknown)."""
        return status

    def version(self) -> str:
        return "?"


class Keel(Vmm):
    name = "Keel"

    def argv(self, guest: Guest, work: Path) -> list[str]:
        lines = [
            "[[vm]]",
            'name = "bench"',
            'arch = "x86_64"',
            f"vcpus = {guest.vcpus}",
            f'memory = "{guest.mem_mib}M"',
            f"kernel = {json.dumps(str(self.elf))}",
            f"cmdline = {json.dumps(guest.cmdline())}",
            'serial = "stdio"',
        ]
        if guest.disk:
            lines += ["[[vm.disk]]", f"path = {json.dumps(str(guest.disk))}", 'id = "bench0"']
        toml = work / f"keel-{abs(hash((guest.tests, guest.mem_mib, str(guest.disk))))}.toml"
        toml.write_text("\n".join(lines) + "\n")
        return [self.path, "run", str(toml)]

    def version(self) -> str:
        out = subprocess.run([self.path, "--version"], capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "crates"], capture_output=True, text=True
        ).stdout.strip()
        built = datetime.datetime.fromtimestamp(os.stat(self.path).st_mtime, datetime.timezone.utc)
        return (
            f"{out}, binary {self.path} built {built:%Y-%m-%d %H:%M UTC}; work tree at commit {commit or '?'}"
            f"{' (crates/ has uncommitted changes)' if dirty else ''}"
        )


class Qemu(Vmm):
    name = "QEMU"

    def argv(self, guest: Guest, work: Path) -> list[str]:
        argv = [
            self.path,
            "-M", "microvm,acpi=off,x-option-roms=off",
            "-enable-kvm",
            "-cpu", "host,-arch-capabilities",  # kvm_pvm refuses QEMU's IA32_ARCH_CAPABILITIES write
            "-m", f"{guest.mem_mib}M",
            "-smp", str(guest.vcpus),
            "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
            "-kernel", str(self.elf),
            "-append", guest.cmdline(),
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
        ]  # fmt: skip
        if guest.disk:
            argv += [
                "-global", "virtio-mmio.force-legacy=false",
                "-drive", f"id=d0,file={guest.disk},format=raw,if=none",
                "-device", "virtio-blk-device,drive=d0,serial=bench0",
            ]  # fmt: skip
        return argv

    def guest_code(self, status: int) -> int | None:
        # isa-debug-exit: QEMU exits with (code << 1) | 1.
        return (status - 1) // 2 if status % 2 == 1 else None

    def version(self) -> str:
        out = subprocess.run([self.path, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip() if out else "?"


class Firecracker(Vmm):
    """Untested here (not installed on the development machine)."""

    name = "Firecracker"

    def argv(self, guest: Guest, work: Path) -> list[str]:
        config = {
            "boot-source": {"kernel_image_path": str(self.elf), "boot_args": guest.cmdline()},
            "drives": [],
            "machine-config": {"vcpu_count": guest.vcpus, "mem_size_mib": guest.mem_mib},
        }
        if guest.disk:
            config["drives"].append(
                {"drive_id": "bench0", "path_on_host": str(guest.disk), "is_root_device": False, "is_read_only": False}
            )
        path = work / f"fc-{abs(hash((guest.tests, guest.mem_mib, str(guest.disk))))}.json"
        path.write_text(json.dumps(config))
        return [self.path, "--no-api", "--config-file", str(path)]

    def guest_code(self, status: int) -> int | None:
        return None  # no debug-exit port: the guest falls back to an i8042 reset

    def version(self) -> str:
        out = subprocess.run([self.path, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip() if out else "?"


class CloudHypervisor(Vmm):
    """Untested here. Its virtio devices are PCI: the guest sees no virtio-mmio device."""

    name = "Cloud Hypervisor"
    exits_itself = False  # an i8042 reset reboots the VM
    has_mmio = False

    def argv(self, guest: Guest, work: Path) -> list[str]:
        argv = [
            self.path,
            "--kernel", str(self.elf),
            "--cmdline", guest.cmdline(),
            "--cpus", f"boot={guest.vcpus}",
            "--memory", f"size={guest.mem_mib}M",
            "--serial", "tty", "--console", "off",
        ]  # fmt: skip
        if guest.disk:
            argv += ["--disk", f"path={guest.disk}"]
        return argv

    def guest_code(self, status: int) -> int | None:
        return None

    def version(self) -> str:
        out = subprocess.run([self.path, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip() if out else "?"


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    vmm: str
    ok: bool
    error: str = ""
    first_line_s: float | None = None
    exit_s: float | None = None
    max_rss_kib: int | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    samples: dict = field(default_factory=dict)


def vmm_pid(pid: int) -> int:
    """The VMM's pid: `pid` itself, or its only child when `pid` is GNU time."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if len(children) == 1 else pid


def smaps_guest_ram(pid: int, mem_mib: int) -> dict:
    """Rss of the guest-RAM mapping(s) of `pid`: anonymous mappings exactly `mem_mib` MiB long."""
    want = mem_mib * 1024
    maps = []
    current = None
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError as e:
        return {"error": f"smaps: {e}"}
    for line in text.splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = {"range": line.split()[0], "name": line.split()[5] if len(line.split()) > 5 else ""}
            maps.append(current)
        elif current is not None and ":" in line:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                current[key] = int(parts[0])
    ram = [m for m in maps if m.get("Size") == want and not m["name"]]
    if not ram:
        return {"error": f"no anonymous {want} KiB mapping in smaps"}
    status = Path(f"/proc/{pid}/status").read_text()
    rss_now = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
    hwm_now = int(re.search(r"^VmHWM:\s+(\d+)", status, re.M).group(1))
    return {
        "guest_rss_kib": sum(m.get("Rss", 0) for m in ram),
        "guest_anon_huge_kib": sum(m.get("AnonHugePages", 0) for m in ram),
        "mappings": len(ram),
        "rss_at_sample_kib": rss_now,
        "hwm_at_sample_kib": hwm_now,
    }


def with_time(argv: list[str], out: Path) -> list[str]:
    """`argv` under GNU time, which reports the VMM's ru_maxrss (from its own wait4).

    Not os.wait4 here: on exec Linux folds the old mm's high-water mark into the
    child's maxrss, so a child of this Python process (~15-25 MiB) would report
    at least Python's RSS. GNU time forks the VMM from a ~1 MiB process.
    """
    return [TIME, "-f", "%M", "-o", str(out), *argv]


def read_time(out: Path) -> int | None:
    try:
        return int(out.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def run_once(
    vmm: Vmm, guest: Guest, work: Path, sample_on: str | None = None, measure_rss: bool = False
) -> Run:
    """Starts `vmm` on `guest`, timestamps every serial line, reaps it.

    `sample_on`: a line prefix on which /proc/<pid>/smaps is sampled.
    `measure_rss`: run the VMM under GNU time for its peak RSS.
    """
    argv = vmm.argv(guest, work)
    time_out = work / "time.out"
    if measure_rss:
        time_out.unlink(missing_ok=True)
        argv = with_time(argv, time_out)
    err_path = work / "stderr.txt"
    with open(err_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    run = Run(vmm=vmm.name, ok=False)
    fd = proc.stdout.fileno()
    buf = b""
    deadline = t0 + RUN_TIMEOUT_S
    verdict_at = None
    killed = None
    while True:
        now = time.monotonic()
        if now > deadline:
            killed = f"timed out after {RUN_TIMEOUT_S} s"
            os.kill(vmm_pid(proc.pid), signal.SIGKILL)
            proc.kill()
            break
        if verdict_at is not None and not vmm.exits_itself and now > verdict_at + 0.5:
            os.kill(vmm_pid(proc.pid), signal.SIGTERM)  # a VMM that cannot stop by itself
            verdict_at = float("inf")
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        t = time.monotonic() - t0
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            text = raw.decode(errors="replace").rstrip("\r")
            run.lines.append((t, text))
            # The guest's first line, not a VMM's own log line on the same stdout
            # (Firecracker logs there).
            if run.first_line_s is None and text.startswith("keeltest"):
                run.first_line_s = t
            if sample_on and text.startswith(sample_on) and not run.samples:
                run.samples = smaps_guest_ram(vmm_pid(proc.pid), guest.mem_mib)
            if text.startswith("keeltest: PASS") or text.startswith("keeltest: FAIL"):
                verdict_at = time.monotonic()
    proc.wait()
    proc.stdout.close()
    run.exit_s = time.monotonic() - t0
    if measure_rss:
        run.max_rss_kib = read_time(time_out)
    texts = [line for _, line in run.lines]
    passed = "keeltest: PASS" in texts
    code = vmm.guest_code(proc.returncode) if proc.returncode >= 0 else None
    if killed:
        run.error = killed
    elif not passed:
        fail = next((line for line in texts if line.startswith("keeltest: FAIL")), None)
        tail = err_path.read_text(errors="replace").strip().splitlines()[-1:]
        run.error = fail or f"no PASS line (exit status {proc.returncode}; stderr: {' '.join(tail)})"
    elif vmm.exits_itself and vmm.guest_code(0) is not None and code != 0:
        run.error = f"PASS printed but exit status {proc.returncode}"
    elif sample_on and "error" in run.samples:
        run.error = run.samples["error"]
    elif measure_rss and run.max_rss_kib is None:
        run.error = "GNU time reported no maximum RSS"
    elif sample_on and not run.samples:
        run.error = run.samples["error"]
    else:
        run.ok = True
    if not vmm.exits_itself:
        # Stopped by the harness: "exit" is the verdict line, not the process end.
        verdict = next((t for t, line in run.lines if line.startswith("keeltest: PASS")), None)
        run.exit_s = verdict
    return run


def reap(pid: int, deadline: float) -> tuple[int, object]:
    """wait4 for `pid`, killing it at `deadline`."""
    while True:
        got, status, rusage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return status, rusage
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            return status, rusage
        time.sleep(0.002)


def line_value(run: Run, pattern: str) -> re.Match | None:
    for _, line in run.lines:
        m = re.match(pattern, line)
        if m:
            return m
    return None


def line_time(run: Run, prefix: str) -> tuple[int, float] | None:
    for i, (t, line) in enumerate(run.lines):
        if line.startswith(prefix):
            return i, t
    return None


# --------------------------------------------------------------------------- CPU budget


def cpu_cgroup_mount() -> tuple[str, Path] | None:
    """The cgroup cpu controller's (version, mount), by keel's rule (crates/keel-kvm/src/placement.rs):
    a cgroup2 mount whose cgroup.controllers lists cpu, else a v1 cgroup mount with the cpu option."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        dash = fields.index("-")
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        mounts.append((fields[dash + 1], Path(point), fields[dash + 3].split(",")))
    for fstype, point, _ in mounts:
        if fstype == "cgroup2":
            try:
                if "cpu" in (point / "cgroup.controllers").read_text().split():
                    return "v2", point
            except OSError:
                pass
    for fstype, point, opts in mounts:
        if fstype == "cgroup" and "cpu" in opts:
            return "v1", point
    return None


def cgroup_cpu_s(d: Path) -> float:
    """CPU time used by cgroup `d`: v2 cpu.stat usage_usec, v1 cpuacct.usage when cpuacct shares
    the hierarchy, else the sum of its live threads' run time (/proc/<tid>/schedstat)."""
    try:
        m = re.search(r"^usage_usec (\d+)", (d / "cpu.stat").read_text(), re.M)
        if m:
            return int(m.group(1)) / 1e6
    except OSError:
        pass
    try:
        return int((d / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        pass
    ns = 0
    for tid in (d / "tasks").read_text().split():
        try:
            ns += int(Path(f"/proc/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return ns / 1e9


def budget_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root (a budget needs a cgroup of its own)"
    if cpu_cgroup_mount() is None:
        return "no cgroup cpu controller mounted"
    return None


def measure_budget_once(keel: str, elf: Path, work: Path, percent: int) -> tuple[float | None, str]:
    """The CPU share (of one CPU) of a guest busy-looping under `percent` % of each period."""
    mount = cpu_cgroup_mount()
    if mount is None:
        return None, "no cgroup cpu controller mounted"
    budget_us = BUDGET_PERIOD_US * percent // 100
    system = work / "budget.toml"
    system.write_text(
        "\n".join(
            [
                "[system]",
                'name = "bench-budget"',
                "[[vm]]",
                'name = "t"',
                'arch = "x86_64"',
                'memory = "64M"',
                f"kernel = {json.dumps(str(elf))}",
                f'cmdline = "keeltest=pause:{BUDGET_SPIN_MS}"',
                'serial = "stdio"',
                f"placement = {{ budget_us = {budget_us}, period_us = {BUDGET_PERIOD_US} }}",
                "",
            ]
        )
    )
    proc = subprocess.Popen(
        [keel, "run", str(system)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    cgroup = mount[1] / "keel" / f"bench-budget-{proc.pid}" / "t"
    share, error = None, ""
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for raw in proc.stdout:
            if raw.startswith(b"keeltest: pause"):
                # The guest spins from here; leave its first 100 ms out.
                time.sleep(0.1)
                u0, t0 = cgroup_cpu_s(cgroup), time.monotonic()
                time.sleep(BUDGET_WINDOW_S)
                u1, t1 = cgroup_cpu_s(cgroup), time.monotonic()
                share = (u1 - u0) / (t1 - t0)
                break
            if time.monotonic() > deadline:
                break
        proc.stdout.read()
        proc.wait(timeout=RUN_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc.kill()
        proc.wait()
        error = str(e)
    if proc.returncode != 0 and not error:
        tail = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        error = f"keel exit {proc.returncode}: {' '.join(tail)}"
    elif share is None and not error:
        error = "the guest never printed `keeltest: pause`"
    proc.stderr.close()
    if cgroup.parent.exists():
        error = error or f"{cgroup.parent} was not removed"
    return (share * 100 if share is not None and not error else None), error


def measure_budgets(keel: str, elf: Path, work: Path) -> dict:
    """Every budget of BUDGET_PERCENTS, BUDGET_RUNS times each (interleaved)."""
    res = {
        "period_us": BUDGET_PERIOD_US,
        "spin_ms": BUDGET_SPIN_MS,
        "window_s": BUDGET_WINDOW_S,
        "cgroup": None,
        "measured": {str(p): [] for p in BUDGET_PERCENTS},
        "failures": [],
        "skipped": budget_unavailable(),
    }
    if res["skipped"]:
        log(f"budget: not measured: {res['skipped']}")
        return res
    version, mount = cpu_cgroup_mount()
    res["cgroup"] = f"{version} at {mount}"
    for i in range(BUDGET_RUNS):
        for p in BUDGET_PERCENTS:
            share, error = measure_budget_once(keel, elf, work, p)
            if share is None:
                res["failures"].append(f"{p} % run {i + 1}: {error}")
                log(f"budget: {res['failures'][-1]}")
            else:
                res["measured"][str(p)].append(share)
    return res


def budget_table(res: dict) -> list[str]:
    if res["skipped"]:
        return [f"CPU budget: not measured ({res['skipped']})."]
    rows = [
        "| budget (of each period) | measured CPU share, median (min–max) | runs |",
        "|---|---|---|",
    ]
    for p in BUDGET_PERCENTS:
        vals = res["measured"][str(p)]
        cell = f"{statistics.median(vals):.1f} % ({min(vals):.1f}–{max(vals):.1f})" if vals else "failed"
        rows.append(f"| {p} % ({p * res['period_us'] // 100} of {res['period_us']} us) | {cell} | {len(vals)} |")
    return rows


def budget_text(res: dict) -> list[str]:
    return [
        "## CPU budget (Keel on Linux)",
        "",
        f"The test guest busy-loops (`pause:{res['spin_ms']}`) under `placement = {{ budget_us = B, "
        f"period_us = {res['period_us']} }}`: keel puts its process in a cgroup of its own "
        f"(cgroup {res['cgroup'] or '–'}) with that CPU bandwidth. The harness reads the cgroup's CPU time "
        f"(v2 `cpu.stat` usage_usec; v1 `cpuacct.usage`, or the sum of its threads' `/proc/<tid>/schedstat` "
        f"when cpuacct is a separate hierarchy) {res['window_s']:.0f} s apart from 100 ms after the guest's "
        "`keeltest: pause` line; the share is CPU time over wall time, of one CPU.",
        "",
        *budget_table(res),
        "",
    ]


def budget_main() -> int:
    elf = Path(
        os.environ.get("KEELTEST_ELF") or ROOT / "guest/testguest/target/x86_64-unknown-none/release/keel-testguest"
    )
    keel = os.environ.get("KEEL") or str(Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release/keel")
    if not elf.is_file() or not os.access(keel, os.X_OK):
        log(f"budget: needs {keel} and {elf}")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        res = measure_budgets(keel, elf, Path(tmp))
    (OUT / "budget.json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(budget_text(res)))
    return 1 if res["failures"] else 0


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    key: str
    title: str
    unit: str
    better: str  # "lower" | "higher"
    plot: str  # PNG name (several figures may share one)
    values: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def add(self, vmm: str, value: float | None, error: str = "") -> None:
        if value is None:
            self.failures.setdefault(vmm, []).append(error or "no value")
        else:
            self.values.setdefault(vmm, []).append(value)


FIGURES = [
    Figure("first_line_ms", "process start → first serial line", "ms", "lower", "boot.png"),
    Figure("exit_ms", "process start → exit (guest `pause:0`)", "ms", "lower", "boot.png"),
    Figure("teardown_ms", "teardown: guest's PASS line → process reaped", "ms", "lower", "boot.png"),
    Figure("peak_rss_mib", "peak RSS (ru_maxrss via GNU time)", "MiB", "lower", "memory.png"),
    Figure("guest_touched_mib", "guest RAM resident (smaps Rss of the RAM mapping)", "MiB", "lower", "memory.png"),
    Figure("overhead_mib", "VMM overhead = peak RSS − guest RAM resident", "MiB", "lower", "memory.png"),
    Figure("mmio_guest_ns", "MMIO read round trip, guest TSC", "ns/read", "lower", "mmio.png"),
    Figure("mmio_host_ns", "MMIO read round trip, host wall clock", "ns/read", "lower", "mmio.png"),
    Figure("seq_read_mibs", f"virtio-blk sequential read, {SEQ_REQUEST}B requests, QD1", "MiB/s", "higher", "blk.png"),
    Figure("seq_write_mibs", f"virtio-blk sequential write, {SEQ_REQUEST}B requests, QD1", "MiB/s", "higher", "blk.png"),
    Figure("rand_read_iops", "virtio-blk 4 KiB random read, QD1", "IOPS", "higher", "blk.png"),
    Figure("rate_vms_s", f"start rate: {RATE_VMS} VMs × {RATE_MEM_MIB} MiB in parallel", "VMs/s", "higher", "startrate.png"),
    Figure("rate_total_rss_mib", f"start rate: sum of the {RATE_VMS} peak RSS", "MiB", "lower", "startrate.png"),
]
FIG = {f.key: f for f in FIGURES}


def measure_boot(vmm: Vmm, work: Path, disk: Path) -> Run:
    run = run_once(vmm, Guest(f"pause:{BOOT_PAUSE_MS}", disk=disk if vmm.has_mmio else None), work)
    ok = run.ok
    FIG["first_line_ms"].add(vmm.name, run.first_line_s * 1e3 if ok and run.first_line_s else None, run.error)
    FIG["exit_ms"].add(vmm.name, run.exit_s * 1e3 if ok and vmm.exits_itself else None, run.error or "stopped by the harness")
    verdict = line_time(run, "keeltest: PASS")
    teardown = (run.exit_s - verdict[1]) * 1e3 if ok and verdict and vmm.exits_itself else None
    FIG["teardown_ms"].add(vmm.name, teardown, run.error or "stopped by the harness")
    return run


def measure_memory(vmm: Vmm, work: Path, disk: Path) -> Run:
    guest = Guest(f"pause:{MEM_PAUSE_MS}", disk=disk if vmm.has_mmio else None)
    run = run_once(vmm, guest, work, sample_on="keeltest: pause", measure_rss=True)
    if run.ok:
        peak = run.max_rss_kib / 1024
        touched = run.samples["guest_rss_kib"] / 1024
        FIG["peak_rss_mib"].add(vmm.name, peak)
        FIG["guest_touched_mib"].add(vmm.name, touched)
        FIG["overhead_mib"].add(vmm.name, peak - touched)
    else:
        for key in ("peak_rss_mib", "guest_touched_mib", "overhead_mib"):
            FIG[key].add(vmm.name, None, run.error)
    return run


def measure_mmio(vmm: Vmm, work: Path, disk: Path) -> Run | None:
    if not vmm.has_mmio:
        for key in ("mmio_guest_ns", "mmio_host_ns"):
            FIG[key].failures.setdefault(vmm.name, []).append("not applicable: no virtio-mmio device")
        return None
    run = run_once(vmm, Guest(f"mmio-bench:{MMIO_READS}", disk=disk), work)
    guest_ns = host_ns = None
    if run.ok:
        m = line_value(run, r"keeltest: mmio-bench (\d+) ns per read")
        guest_ns = float(m.group(1)) if m else None
        # Host: the time between the serial line before the loop and the line after it,
        # minus the cost of printing that line (estimated from the next line, per byte).
        hit = line_time(run, f"keeltest: mmio-bench {MMIO_READS} reads in")
        if hit and 0 < hit[0] < len(run.lines) - 1:
            i, t_after = hit
            t_before = run.lines[i - 1][0]
            t_next, next_line = run.lines[i + 1]
            print_cost = (t_next - t_after) * (len(run.lines[i][1]) + 1) / (len(next_line) + 1)
            host_ns = max(0.0, (t_after - t_before - print_cost)) / MMIO_READS * 1e9
            run.samples = {"loop_window_s": t_after - t_before, "print_cost_s": print_cost}
    FIG["mmio_guest_ns"].add(vmm.name, guest_ns, run.error or "no ns-per-read line")
    FIG["mmio_host_ns"].add(vmm.name, host_ns, run.error or "serial lines not found")
    return run


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measure_blk(vmm: Vmm, work: Path, disk: Path) -> Run | None:
    keys = ("seq_read_mibs", "seq_write_mibs", "rand_read_iops")
    if not vmm.has_mmio:
        for key in keys:
            FIG[key].failures.setdefault(vmm.name, []).append("not applicable: no virtio-mmio device")
        return None
    if DROP_CACHES:
        drop_caches()
    tests = (
        f"blkbench:read:{SEQ_REQUEST},blkbench:write:{SEQ_REQUEST},blkbench:randread:4K:{RAND_REQUESTS * 4}K"
    )
    run = run_once(vmm, Guest(tests, disk=disk), work)
    tsc = line_value(run, r"keeltest: tsc (\d+) kHz")
    for key, kind in zip(keys, ("read", "write", "randread")):
        value = None
        m = line_value(run, rf"keeltest: blkbench {kind} (\d+) x (\d+) bytes in (\d+) tsc cycles")
        if run.ok and m and tsc:
            n, size, cycles = (int(g) for g in m.groups())
            seconds = cycles / (int(tsc.group(1)) * 1e3)
            value = n * size / seconds / 2**20 if kind != "randread" else n / seconds
        FIG[key].add(vmm.name, value, run.error or f"no blkbench {kind} line")
    return run


def measure_rate(vmm: Vmm, work: Path) -> list[str]:
    """K VMs started at once; the guest exits at once (`pause:0`, no devices)."""
    guest = Guest("pause:0", mem_mib=RATE_MEM_MIB)
    argv = vmm.argv(guest, work)
    procs = []
    t0 = time.monotonic()
    for i in range(RATE_VMS):
        out = open(work / f"rate-{i}.out", "wb")
        timed = with_time(argv, work / f"rate-{i}.time")
        procs.append((subprocess.Popen(timed, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL), out))
    total_rss = 0
    errors = []
    deadline = t0 + RUN_TIMEOUT_S
    for i, (p, out) in enumerate(procs):
        status, _ = reap(p.pid, deadline)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.close()
        rss = read_time(work / f"rate-{i}.time")
        if rss is None:
            errors.append(f"VM {i}: GNU time reported no maximum RSS")
        else:
            total_rss += rss
        text = (work / f"rate-{i}.out").read_text(errors="replace")
        if "keeltest: PASS" not in text:
            errors.append(f"VM {i}: no PASS line (exit status {p.returncode})")
    elapsed = time.monotonic() - t0
    if vmm.exits_itself and not errors:
        FIG["rate_vms_s"].add(vmm.name, RATE_VMS / elapsed)
        FIG["rate_total_rss_mib"].add(vmm.name, total_rss / 1024)
    else:
        reason = "; ".join(errors) or "VMM does not exit by itself"
        FIG["rate_vms_s"].add(vmm.name, None, reason)
        FIG["rate_total_rss_mib"].add(vmm.name, None, reason)
    return errors


# --------------------------------------------------------------------------- machine facts


def kvm_kind() -> str:
    mods = {m for m in ("kvm_pvm", "kvm_intel", "kvm_amd") if Path(f"/sys/module/{m}").exists()}
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    hw = {"vmx", "svm"} & set(flags.split())
    if "kvm_pvm" in mods:
        return "software KVM (kvm_pvm: guest kernel-mode code is emulated)"
    if mods & {"kvm_intel", "kvm_amd"}:
        return f"hardware KVM ({', '.join(sorted(mods))})"
    if not hw:
        return "software KVM (no vmx/svm in /proc/cpuinfo)"
    return "hardware KVM (vmx/svm present)"


def machine_facts(vmms: list[Vmm]) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "kvm": kvm_kind(),
        "thp": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
        if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()
        else "?",
        "versions": {v.name: v.version() for v in vmms},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------- output


def fmt(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def summary_table(names: list[str]) -> list[str]:
    head = "| figure | unit | better | " + " | ".join(f"{n} median (min–max)" for n in names)
    head += " | Keel/QEMU |"
    rows = [head, "|" + "---|" * (4 + len(names))]
    for f in FIGURES:
        cells = []
        for n in names:
            vals = f.values.get(n, [])
            fails = f.failures.get(n, [])
            if vals:
                cell = f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))})"
                if fails:
                    cell += f", {len(fails)} failed"
            elif fails:
                cell = "n/a" if all(x.startswith("not applicable") for x in fails) else f"failed ({fails[0][:60]})"
            else:
                cell = "not measured"
            cells.append(cell)
        k, q = f.values.get("Keel"), f.values.get("QEMU")
        ratio = f"{statistics.median(k) / statistics.median(q):.2f}" if k and q and statistics.median(q) else "–"
        rows.append(f"| {f.title} | {f.unit} | {f.better} | " + " | ".join(cells) + f" | {ratio} |")
    return rows


def plots(names: list[str]) -> list[str]:
    """One PNG per figure group; returns the files written (empty if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not importable: no plots")
        return []
    written = []
    groups: dict[str, list[Figure]] = {}
    for f in FIGURES:
        groups.setdefault(f.plot, []).append(f)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for png, figs in groups.items():
        fig, axes = plt.subplots(1, len(figs), figsize=(3.2 * len(figs), 3.2), squeeze=False)
        for ax, f in zip(axes[0], figs):
            data = [f.values.get(n, []) for n in names]
            for i, vals in enumerate(data):
                if vals:
                    ax.boxplot([vals], positions=[i], widths=0.5, showfliers=False)
                    xs = [i + (j - len(vals) / 2) * 0.3 / max(1, len(vals)) for j in range(len(vals))]
                    ax.scatter(xs, vals, s=9, color=colours[i % len(colours)], zorder=3)
            ax.set_xticks(range(len(names)), [n.replace("Cloud Hypervisor", "CH") for n in names])
            ax.set_xlim(-0.6, len(names) - 0.4)
            ax.set_title(textwrap.fill(f.title, 34), fontsize=7)
            ax.set_ylabel(f"{f.unit} ({f.better} is better)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        path = OUT / png
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(png)
    return written


# --------------------------------------------------------------------------- main


def make_disk(path: Path, mib: int) -> None:
    """A fully allocated file (not sparse), so reads come from real page-cache pages."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    with open(path, "rb") as f:  # priming read: the cache is warm for both VMMs
        while f.read(1 << 22):
            pass


def fincore(path: Path) -> str:
    if not shutil.which("fincore"):
        return "fincore not installed"
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES,SIZE", str(path)], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def main() -> int:
    elf = Path(
        os.environ.get("KEELTEST_ELF") or ROOT / "guest/testguest/target/x86_64-unknown-none/release/keel-testguest"
    )
    keel = os.environ.get("KEEL") or str(Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release/keel")
    qemu = os.environ.get("QEMU") or shutil.which("qemu-system-x86_64") or ""
    problems = []
    if not elf.is_file():
        problems.append(f"guest {elf} missing (make testguest)")
    if not os.access(keel, os.X_OK):
        problems.append(f"keel {keel} missing (make build, or KEEL=)")
    if not qemu or not os.access(qemu, os.X_OK):
        problems.append("qemu-system-x86_64 not found (apt-get install -y qemu-system-x86, or QEMU=)")
    if not os.access(TIME, os.X_OK):
        problems.append(f"{TIME} missing (apt-get install -y time)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        problems.append("/dev/kvm is not usable")
    vmms: list[Vmm] = [Keel(keel, elf), Qemu(qemu, elf)]
    baseline = os.environ.get("KEEL_BASELINE")
    if baseline:
        # Another keel binary (an older commit) interleaved in the same run: before/after.
        if os.access(baseline, os.X_OK):
            before = Keel(baseline, elf)
            before.name = "Keel (baseline)"
            vmms.insert(1, before)
        else:
            problems.append(f"KEEL_BASELINE={baseline} is not an executable")
    for var, cls in (("FIRECRACKER", Firecracker), ("CLOUD_HYPERVISOR", CloudHypervisor)):
        path = os.environ.get(var)
        if path:
            if os.access(path, os.X_OK):
                vmms.append(cls(path, elf))
            else:
                problems.append(f"{var}={path} is not an executable")
    if problems:
        for p in problems:
            log(p)
        return 2
    names = [v.name for v in vmms]
    OUT.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.monotonic()
    facts = machine_facts(vmms)
    log(f"{'quick' if QUICK else 'full'} run: {RUNS} runs per VMM and figure, VMMs {', '.join(names)}; output {OUT}")
    log(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    failed_runs: list[str] = []
    load_samples = [load_start[0]]
    examples: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        work = Path(tmp)
        disk = work / "disk.img"
        make_disk(disk, DISK_MIB)
        cache_state = fincore(disk)
        # Warm-up (not measured): binaries and shared libraries into the page cache.
        for v in vmms:
            r = run_once(v, Guest("pause:0", disk=disk if v.has_mmio else None), work)
            if not r.ok:
                log(f"warm-up {v.name}: {r.error}")
        steps = [
            ("boot", lambda v: measure_boot(v, work, disk)),
            ("memory", lambda v: measure_memory(v, work, disk)),
            ("mmio", lambda v: measure_mmio(v, work, disk)),
            ("blk", lambda v: measure_blk(v, work, disk)),
        ]
        for i in range(RUNS):
            for step, fn in steps:
                for v in vmms:  # interleaved: A B A B ...
                    r = fn(v)
                    if r is not None:
                        examples.setdefault(step, {}).setdefault(v.name, [line for _, line in r.lines])
                        if not r.ok:
                            failed_runs.append(f"{step} run {i + 1} {v.name}: {r.error}")
                            log(failed_runs[-1])
            load_samples.append(os.getloadavg()[0])
            log(f"round {i + 1}/{RUNS} done ({time.monotonic() - started:.0f} s)")
        for i in range(RATE_RUNS):
            for v in vmms:
                for e in measure_rate(v, work):
                    failed_runs.append(f"rate run {i + 1} {v.name}: {e}")
                    log(failed_runs[-1])
        cache_after = fincore(disk)
        budget = measure_budgets(keel, elf, work)
        failed_runs += [f"budget {f}" for f in budget["failures"]]
    load_end = os.getloadavg()
    floor = subprocess.run([TIME, "-f", "%M", "/bin/true"], capture_output=True, text=True).stderr.strip()
    elapsed = time.monotonic() - started
    pngs = plots(names)

    missing = [
        f"{f.key} for {n}" for f in FIGURES for n in ("Keel", "QEMU") if not f.values.get(n)
    ]
    results = {
        "mode": "quick" if QUICK else "full",
        "runs": RUNS,
        "rate_runs": RATE_RUNS,
        "machine": facts,
        "load_start": load_start,
        "load_end": load_end,
        "load_max_1min": max(load_samples + [load_end[0]]),
        "elapsed_s": elapsed,
        "time_floor_kib": floor,
        "page_cache": {"before": cache_state, "after": cache_after, "dropped": DROP_CACHES},
        "figures": {f.key: {"title": f.title, "unit": f.unit, "values": f.values, "failures": f.failures} for f in FIGURES},
        "failed_runs": failed_runs,
        "missing": missing,
        "example_output": examples,
        "budget": budget,
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_results_md(results, names, pngs)
    log(f"wrote {OUT / 'RESULTS.md'} in {elapsed:.0f} s")
    print("\n".join(summary_table(names)))
    if failed_runs or missing:
        log(f"{len(failed_runs)} failed runs, missing figures: {', '.join(missing) or 'none'}")
        return 1
    return 0


def write_results_md(res: dict, names: list[str], pngs: list[str]) -> None:
    """Writes the generated part; bench/ANALYSIS.md (hand-written) is appended when present."""
    m = res["machine"]
    ls, le = res["load_start"], res["load_end"]
    cores = m["cores"] or 1
    high = max(ls[0], le[0], res["load_max_1min"]) > 0.5 * cores
    lines = [
        "# Keel vs QEMU: benchmark results",
        "",
        f"Generated by `bash bench/run.sh` ({res['mode']} mode, {res['runs']} runs per VMM and figure, "
        f"{res['rate_runs']} start-rate rounds; {res['elapsed_s']:.0f} s). Raw data: `results.json`.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; kernel {m['kernel']}",
        f"- KVM: **{m['kvm']}**",
        f"- transparent huge pages: `{m['thp']}`",
    ]
    for n in names:
        lines.append(f"- {n}: {m['versions'].get(n, '?')}")
    if "Firecracker" not in names:
        lines.append("- Firecracker: **not measured** (set `FIRECRACKER=/path/to/firecracker`)")
    if "Cloud Hypervisor" not in names:
        lines.append("- Cloud Hypervisor: **not measured** (set `CLOUD_HYPERVISOR=/path/to/cloud-hypervisor`)")
    lines += [
        f"- date: {m['date']}",
        f"- load average (1/5/15 min) at start: {ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f}; at end: "
        f"{le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f}; highest 1-min sample during the run: {res['load_max_1min']:.2f}",
    ]
    if high:
        lines.append(
            f"- **Load was high** (above half the {cores} cores) during this run: other work shared the CPUs, "
            "so every figure below is noisier and slower than on an idle machine. The runs are interleaved, so "
            "the load hits both VMMs alike, but the min–max spread is wider."
        )
    lines += ["", "## Results", "", *summary_table(names), ""]
    if res["failed_runs"]:
        lines += ["Failed runs:", ""] + [f"- {f}" for f in res["failed_runs"][:30]] + [""]
    if res["missing"]:
        lines += [f"Missing figures: {', '.join(res['missing'])}", ""]
    for png in pngs:
        lines.append(f"![{png}]({png})")
    lines += ["", *budget_text(res["budget"]), *method_text(res), ""]
    analysis = ROOT / "bench" / "ANALYSIS.md"
    if analysis.exists() and res["mode"] == "full":
        lines += [analysis.read_text().rstrip(), ""]
    (OUT / "RESULTS.md").write_text("\n".join(lines))


def method_text(res: dict) -> list[str]:
    pc = res["page_cache"]
    return [
        "## Method",
        "",
        "- **Same guest, same flags.** Every VMM boots the same ELF (`guest/testguest`, a PVH kernel), 1 vCPU, "
        f"{MEM_MIB} MiB, one virtio-blk disk (the same host file), serial on the VMM's stdout. QEMU: "
        "`qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off -enable-kvm -cpu host,-arch-capabilities "
        "-nodefaults -nographic -serial stdio -no-reboot -global virtio-mmio.force-legacy=false` with "
        "`isa-debug-exit` at 0xf4 and `virtio-blk-device`. Keel: `keel run <system.toml>` (generated), default "
        "log level.",
        f"- **Interleaved:** for each of the {res['runs']} rounds, each figure's run is done for every VMM in "
        "turn (Keel, QEMU, Keel, QEMU, …), so slow drifts of the machine hit both alike. One unmeasured "
        "warm-up run per VMM first. Medians, with min–max; the ratio is Keel's median over QEMU's (for "
        "“higher is better” figures a ratio above 1 means Keel is faster).",
        "- **Boot:** the guest `pause:0` (boots, calibrates its TSC against the PIT for ~10 ms, probes the "
        "disk, prints its PASS line, writes the debug-exit port). *First serial line* is the time from just "
        "before `fork`/`exec` of the VMM to the harness reading the first complete line on the VMM's stdout; "
        "*exit* is the time until the harness has reaped the process (`waitpid`); *teardown* is the part "
        "of it after the guest's last line (`keeltest: PASS`, printed just before the debug-exit write).",
        f"- **Memory:** the guest `pause:{MEM_PAUSE_MS}` prints `keeltest: pause` and busy-waits. On that line "
        "the harness reads `/proc/<pid>/smaps` and takes the Rss of the anonymous mapping exactly "
        f"{MEM_MIB} MiB long (the guest RAM; Keel's and QEMU's both have one). Peak RSS is the VMM's "
        "`ru_maxrss` as GNU `time -f %M` reports it from its `wait4`, for every VMM alike. (Not `os.wait4` "
        "in the harness: at `exec` Linux folds the old address space's high-water mark into the child's "
        "`maxrss`, so any child of the Python harness reports at least the harness's own ~15–25 MiB; GNU "
        f"time forks the VMM from a small process: `time /bin/true` reports {res['time_floor_kib']} KiB, the "
        "floor of this method.) Overhead = peak RSS − guest RAM resident. The "
        "test guest itself touches ~1.3 MiB; QEMU advises huge pages (`MADV_HUGEPAGE`) for guest RAM, so its "
        "resident guest RAM is counted in 2 MiB pages.",
        f"- **MMIO exit:** the guest `mmio-bench:{MMIO_READS}` reads the virtio-mmio MagicValue register "
        f"{MMIO_READS} times (each read is an MMIO exit to the VMM and back). *Guest TSC*: the guest's own "
        "figure (TSC cycles / TSC frequency calibrated against the PIT). *Host wall clock*: the time between "
        "the serial line printed just before the loop and the one printed right after it, minus the cost of "
        "printing that line (estimated per byte from the next line), divided by the number of reads.",
        f"- **virtio-blk:** `blkbench:read:{SEQ_REQUEST}` and `blkbench:write:{SEQ_REQUEST}` over the whole "
        f"{DISK_MIB} MiB disk (one {SEQ_REQUEST}B data descriptor per request), then `blkbench:randread:4K:"
        f"{RAND_REQUESTS * 4}K` ({RAND_REQUESTS} reads at xorshift-random 4 KiB-aligned offsets), all at queue "
        "depth 1, polled (no interrupts), timed by the guest's TSC. The guest never touches the data "
        "(writes send what RAM holds). The disk is a fully written (not sparse) random file, raw format, "
        "host page cache and no `O_DIRECT` for both VMMs (QEMU's default `cache=writeback`; Keel's file "
        "backend). "
        + (
            "**Page cache dropped** (`echo 3 > /proc/sys/vm/drop_caches`) before every blk run."
            if pc["dropped"]
            else "**Page cache warm** for both: the file is read once after it is created, before the first "
            f"run (`fincore` before the runs: `{pc['before']}`; after: `{pc['after']}`)."
        ),
        f"- **Start rate:** {RATE_VMS} VMs of {RATE_MEM_MIB} MiB, no virtio devices, guest `pause:0`, started "
        "at once; VMs/s = VMs / (time from the first `fork` to the last `wait4`); total RSS = sum of the "
        f"VMs' `ru_maxrss`. {res['rate_runs']} rounds per VMM, interleaved.",
        "- **The software KVM dominates absolute numbers.** `/dev/kvm` here is kvm_pvm: every guest "
        "kernel-mode instruction (the whole test guest runs in ring 0) is emulated at ~0.9 µs, and an exit "
        "costs ~10–20 µs. So per-request guest work, not the VMM's device model, is most of every blk "
        "request; the figures compare the VMMs' overheads on *this* machine, not what they would do on "
        "hardware virtualisation.",
        "- Firecracker / Cloud Hypervisor (when their paths are given): the same guest. Neither has the "
        "debug-exit port, so the guest's fallback i8042 reset ends the run; Cloud Hypervisor would reboot "
        "on it, so the harness stops it 0.5 s after the verdict line and reports no exit time for it. "
        "Cloud Hypervisor's virtio devices are PCI, which the test guest does not drive: its MMIO and blk "
        "figures are n/a. This path has not been tried on the development machine (neither VMM is installed).",
    ]


if __name__ == "__main__":
    sys.exit(budget_main() if sys.argv[1:] == ["budget"] else main())
