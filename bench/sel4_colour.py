#!/usr/bin/env python3
"""What cache colouring costs on seL4 (bench/sel4-colour.sh runs this; see bench/README.md).

QEMU models no caches, so the effect of colouring cannot be measured under it; its cost can.
Builds the same one-VM system (the Debian arm64 guest, 1 vCPU, BENCH_COLOUR_MEMORY of RAM)
uncoloured and coloured (8 of the 16 colours of a 1 MiB 16-way llc), interleaved
BENCH_RUNS times, with `keel sel4 build` on the SDK's smp-debug config, and reports per
variant: the system file's size and memory regions, `keel sel4 build` wall time, the
loader image's size, and seconds from QEMU start to KEEL-GUEST-READY (`keel sel4 run`).
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEEL = os.environ.get("KEEL", str(ROOT / "target/release/keel"))
RUNS = int(os.environ.get("BENCH_RUNS", "2"))
MEMORY = os.environ.get("BENCH_COLOUR_MEMORY", "80M")
OUT = Path(os.environ.get("BENCH_OUT", str(ROOT / "bench/out-sel4-colour")))
CACHE = Path(os.environ.get("KEEL_CACHE", Path.home() / ".cache/keel"))

VARIANTS = {
    "uncoloured": "",
    "coloured (8 of 16 colours)": "cache_colours = [0, 1, 2, 3, 4, 5, 6, 7]\n",
}


def toml(name: str, colours: str) -> str:
    return f"""[system]
name = "{name}"
llc = {{ size = "1M", ways = 16 }}

[[vm]]
name = "linux"
arch = "aarch64"
memory = "{MEMORY}"
kernel = "{CACHE}/guest/arm64/vmlinuz"
initrd = "{CACHE}/guest/arm64/initrd.cpio.gz"
cmdline = "quiet"
{colours}"""


def build(desc: Path, out: Path) -> float:
    start = time.monotonic()
    r = subprocess.run(
        [KEEL, "sel4", "build", str(desc), "--config", "smp-debug", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - start
    if r.returncode != 0:
        sys.exit(f"bench sel4-colour: keel sel4 build {desc} failed:\n{r.stderr}")
    return took


def boot(image: Path) -> float:
    """Seconds from start to KEEL-GUEST-READY; waits for the guest's power-off."""
    start = time.monotonic()
    p = subprocess.Popen(
        [KEEL, "sel4", "run", str(image), "--timeout", "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    ready = None
    log = []
    assert p.stdout is not None
    for line in p.stdout:
        log.append(line)
        if ready is None and "KEEL-GUEST-READY" in line:
            ready = time.monotonic() - start
    p.wait()
    if ready is None:
        sys.exit("bench sel4-colour: no KEEL-GUEST-READY:\n" + "".join(log[-40:]))
    return ready


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    results = {v: {"build_s": [], "ready_s": []} for v in VARIANTS}
    # Untimed: `keel sel4 build` first brings the protection-domain ELFs up to date with
    # cargo, which is not the cost of colouring.
    warm = OUT / "warm-up"
    warm.mkdir(exist_ok=True)
    (warm / "system.toml").write_text(toml("colour-bench-warm-up", ""))
    build(warm / "system.toml", warm / "out")
    for run in range(RUNS):
        for i, (variant, colours) in enumerate(VARIANTS.items()):
            d = OUT / f"v{i}"
            d.mkdir(exist_ok=True)
            desc = d / "system.toml"
            desc.write_text(toml(f"colour-bench-{i}", colours))
            b = build(desc, d / "out")
            r = boot(d / "out/loader.img")
            sysfile = next((d / "out").glob("*.system"))
            text = sysfile.read_text()
            res = results[variant]
            res["build_s"].append(b)
            res["ready_s"].append(r)
            res["system_file_bytes"] = len(text.encode())
            res["memory_regions"] = text.count("<memory_region ")
            res["image_bytes"] = (d / "out/loader.img").stat().st_size
            log = (d / "out/microkit.log").read_text()
            m = re.search(r"number of root objects = ([\d,]+)", log)
            res["root_objects"] = int(m.group(1).replace(",", "")) if m else None
            print(f"bench sel4-colour: run {run + 1}/{RUNS} {variant}: build {b:.1f} s, ready {r:.1f} s", flush=True)
    load = os.getloadavg()
    lines = [
        "# seL4 cache colouring: what it costs",
        "",
        f"One Debian arm64 VM, {MEMORY} of RAM, 1 vCPU, smp-debug kernel, QEMU TCG `-smp 4`;",
        f"{RUNS} runs per variant, interleaved; load average at the end {load[0]:.2f} {load[1]:.2f}.",
        "QEMU models no caches: no cache effect is measured here, only the cost.",
        "",
        "| variant | system file | memory regions | root objects | `keel sel4 build` (s, median; min–max) | image | boot to KEEL-GUEST-READY (s, median; min–max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, res in results.items():
        b, r = res["build_s"], res["ready_s"]
        lines.append(
            f"| {variant} | {res['system_file_bytes'] / 1024:.1f} KiB | {res['memory_regions']} | "
            f"{res['root_objects']} | {statistics.median(b):.1f} ({min(b):.1f}–{max(b):.1f}) | "
            f"{res['image_bytes'] / 2**20:.1f} MiB | {statistics.median(r):.1f} ({min(r):.1f}–{max(r):.1f}) |"
        )
    report = "\n".join(lines) + "\n"
    (OUT / "results.md").write_text(report)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(report)


if __name__ == "__main__":
    main()
