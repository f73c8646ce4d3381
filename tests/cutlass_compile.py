"""Compile the CUTLASS-built kernels (``csrc/cutlass_instances/``) and the host-side layout checks
(``tests/cutlass_host/``) without a GPU, with a cache keyed by a hash of everything that goes in.

Used by ``tests/test_cutlass_compile.py`` and ``tests/test_cutlass_layout.py`` (CI compiles one sm_90a and
one sm_80 instantiation), and as a script that compiles the whole instantiation set, one file at a time
(each sm_90a instantiation takes about a minute and 4.5 GB of memory), for a GPU machine or a local check:

    python tests/cutlass_compile.py                 # every instantiation, a table of SASS facts
    python tests/cutlass_compile.py sm90_128x256_f16.cu --json

Each row: instruction kinds (``IGMMA.SP...`` on sm_90a, ``IMMA.SP...`` on sm_80), registers, spill bytes,
ptxas warnings, and dense-equivalent MACs per issued main-loop instruction when
``/work/shared/tools/sass_loop_stats.py`` (or ``NXM_SASS_LOOP_STATS``) is available.

Cache: ``$NXM_CACHE_DIR/cutlass_ci/<hash>/`` (default ``~/.cache/nxm_kernels``); the hash covers the
sources and headers, the CUTLASS headers' version, the nvcc version and the flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nxm_kernels.backends.cuda.build import (CUTLASS_INSTANCES, HEADERS, csrc_dir,  # noqa: E402
                                              cutlass_include_dirs, nvcc_flags)

HOST_DIR = Path(__file__).resolve().parent / "cutlass_host"
NVCC = shutil.which("nvcc")
#: The arch a family's CI instantiation is compiled for.
FAMILY_ARCH = {"sm90": "90a", "sm80": "80"}


def cache_root() -> Path:
    return Path(os.environ.get("NXM_CACHE_DIR", Path.home() / ".cache" / "nxm_kernels")) / "cutlass_ci"


def cuobjdump() -> str | None:
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if cand.is_file():
            return str(cand)
    except ImportError:
        pass
    return shutil.which("cuobjdump")


def _nvcc_version() -> str:
    return subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout if NVCC else ""


#: The csrc headers a CUTLASS translation unit of each family includes (the cache key covers these).
FAMILY_HEADERS = {
    "sm90": ("nxm_kernels.h", "nxm_cutlass.h", "cutlass_epilogue.cuh", "cutlass_sm90_sparse.cuh"),
    "sm80": ("nxm_kernels.h", "nxm_cutlass.h", "cutlass_epilogue.cuh", "cutlass_sm80_sparse.cuh"),
}
assert all(h in HEADERS for hs in FAMILY_HEADERS.values() for h in hs)


def _key(family: str, *parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    version = Path(cutlass_include_dirs()[0]) / "cutlass" / "version.h"
    h.update(version.read_bytes())
    h.update(_nvcc_version().encode())
    for name in FAMILY_HEADERS[family]:
        h.update((csrc_dir() / name).read_bytes())
    return h.hexdigest()[:16]


def family_of(instance: str) -> str:
    return instance.split("_", 1)[0]


def compile_instance(instance: str, arch: str | None = None) -> dict:
    """Compile one instantiation file to a cubin (cached); returns
    ``{"cubin", "log", "seconds", "cached"}``."""
    arch = arch or FAMILY_ARCH[family_of(instance)]
    src = csrc_dir() / "cutlass_instances" / instance
    flags = [*nvcc_flags([arch]), f"-DNXM_WITH_CUTLASS_{family_of(instance).upper()}", "-Xptxas", "-v"]
    out = cache_root() / _key(family_of(instance), src.read_bytes(), " ".join(flags))
    cubin, log = out / (src.stem + f".sm{arch}.cubin"), out / (src.stem + f".sm{arch}.log")
    if cubin.is_file() and log.is_file():
        return {"cubin": cubin, "log": log.read_text(), "seconds": 0.0, "cached": True}
    out.mkdir(parents=True, exist_ok=True)
    cmd = [NVCC, "-cubin", *flags, *[f"-I{d}" for d in cutlass_include_dirs()], f"-I{csrc_dir()}",
           "-o", str(cubin) + ".tmp", str(src)]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for {instance} (sm_{arch}):\n{res.stderr[-6000:]}")
    log.write_text(res.stderr)
    os.replace(str(cubin) + ".tmp", cubin)
    return {"cubin": cubin, "log": res.stderr, "seconds": secs, "cached": False}


def compile_host_check(name: str) -> Path:
    """Build ``tests/cutlass_host/<name>.cu`` into a host executable (cached); returns its path."""
    src = HOST_DIR / f"{name}.cu"
    arch = "90a" if "sm90" in name else "80"
    flags = ["-std=c++17", "--expt-relaxed-constexpr", "-O1", "-DNDEBUG", f"-arch=sm_{arch}"]
    out = cache_root() / _key("sm90" if "sm90" in name else "sm80", src.read_bytes(), " ".join(flags))
    exe = out / name
    if exe.is_file():
        return exe
    out.mkdir(parents=True, exist_ok=True)
    cmd = [NVCC, *flags, *[f"-I{d}" for d in cutlass_include_dirs()], f"-I{csrc_dir()}", "-o", str(exe) + ".tmp",
           str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for {src.name}:\n{res.stderr[-6000:]}")
    os.replace(str(exe) + ".tmp", exe)
    return exe


def ptxas_report(log: str) -> dict:
    """``{kernel: {"registers", "spill_stores", "spill_loads"}}`` from ``-Xptxas -v`` output."""
    report, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
            report[current] = {"registers": 0, "spill_stores": 0, "spill_loads": 0}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            report[current].update(spill_stores=int(m.group(1)), spill_loads=int(m.group(2)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            report[current]["registers"] = int(m.group(1))
    return report


def ptxas_warnings(log: str) -> list[str]:
    return [ln.strip() for ln in log.splitlines() if re.search(r"warning|C75\d\d", ln, re.IGNORECASE)]


def sass_by_function(cubin: Path) -> dict:
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (it ships in the triton wheel)")
    res = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    funcs, current = {}, None
    for line in res.stdout.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            current = m.group(1)
            funcs[current] = []
        elif current:
            funcs[current].append(line)
    return funcs


def mma_kinds(lines) -> dict:
    """Counts of tensor-core instruction kinds (``IGMMA.SP.64x256x64.S8.S8``, ``IMMA.SP.16864.S8.S8.SAT``...)."""
    kinds = {}
    for ln in lines:
        for m in re.finditer(r"\b((?:IGMMA|HGMMA|IMMA|HMMA)[A-Z0-9._x]*)", ln):
            kinds[m.group(1)] = kinds.get(m.group(1), 0) + 1
    return kinds


def loop_stats(cubin: Path) -> float | None:
    """MAC/instr of the kernel's main loop from sass_loop_stats.py, when that tool is available."""
    tool = os.environ.get("NXM_SASS_LOOP_STATS", "/work/shared/tools/sass_loop_stats.py")
    if not Path(tool).is_file():
        return None
    env = dict(os.environ)
    cu = cuobjdump()
    if cu:
        env["PATH"] = str(Path(cu).parent) + os.pathsep + env.get("PATH", "")
    res = subprocess.run([sys.executable, tool, "--json", str(cubin)], capture_output=True, text=True, env=env)
    try:
        data = json.loads(res.stdout)
        rows = data if isinstance(data, list) else data.get("kernels", [data])
        vals = [r.get("macs_per_instruction") for r in rows if isinstance(r, dict)]
        vals = [v for v in vals if v]
        return max(vals) if vals else None
    except (ValueError, AttributeError):
        m = re.search(r"([\d.]+)\s+MAC/instr", res.stdout)
        return float(m.group(1)) if m else None


def facts(instance: str, arch: str | None = None) -> dict:
    """Compile ``instance`` and return its SASS facts."""
    r = compile_instance(instance, arch)
    report = ptxas_report(r["log"])
    kernels = {k: v for k, v in report.items() if "device_kernel" in k or "Kernel" in k}
    sass = sass_by_function(r["cubin"])
    kinds = {}
    for name in kernels:
        for kind, cnt in mma_kinds(sass.get(name, [])).items():
            kinds[kind] = kinds.get(kind, 0) + cnt
    return {
        "instance": instance,
        "arch": arch or FAMILY_ARCH[family_of(instance)],
        "kernels": len(kernels),
        "registers": max((v["registers"] for v in kernels.values()), default=0),
        "spill_bytes": sum(v["spill_stores"] + v["spill_loads"] for v in kernels.values()),
        "warnings": ptxas_warnings(r["log"]),
        "mma": kinds,
        "mac_per_instr": loop_stats(r["cubin"]),
        "compile_s": round(r["seconds"], 1),
        "cached": r["cached"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("instances", nargs="*", help="instantiation files (default: all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if NVCC is None:
        print("nvcc not found", file=sys.stderr)
        return 2
    names = args.instances or [f for fam in ("sm90", "sm80") for f in CUTLASS_INSTANCES[fam]]
    rows, bad = [], 0
    for name in names:  # one at a time: each sm_90a instantiation needs ~4.5 GB
        row = facts(name)
        rows.append(row)
        ok = row["mma"] and not row["spill_bytes"] and not row["warnings"]
        bad += not ok
        if not args.json:
            mma = ", ".join(f"{k} x{v}" for k, v in row["mma"].items()) or "NO TENSOR-CORE INSTRUCTIONS"
            mac = f"{row['mac_per_instr']:.0f}" if row["mac_per_instr"] else "-"
            print(f"{name:24s} sm_{row['arch']:4s} regs {row['registers']:3d}  spills {row['spill_bytes']}  "
                  f"warnings {len(row['warnings'])}  MAC/instr {mac:>6s}  {row['compile_s']:6.1f}s"
                  f"{' (cached)' if row['cached'] else ''}  {mma}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
