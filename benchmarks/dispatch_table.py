"""Derive the committed default dispatch table (``nxm_kernels/dispatch_default.json``) from GPU runs.

Reads the ``gemm.json`` of one or more runs under ``benchmarks/results/`` and keeps, for every
(weight kind, N, K, M) where at least two of our backends' *op* providers (``nxm-<backend>-<spec>-op``:
fp16 in, quantization, GEMM, epilogue, fp16 out, the op ``NxMLinear`` runs) were timed **in the same
run**, their median times. Points with a single backend decide nothing and are left out; ratios are
never taken across runs (each run is one table source line, and a later run's entry replaces an
earlier one only where it also timed two backends). Smoke (CPU) runs are refused.

    python benchmarks/dispatch_table.py benchmarks/results/<run>/gemm.json [...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nxm_kernels.dispatch import DispatchTable, m_bucket, write_tables  # noqa: E402

DEFAULT_OUT = REPO / "nxm_kernels" / "dispatch_default.json"


def table_entries(result: dict) -> dict:
    """``{(kind, n, k, m): {backend: time_us}}`` of one run's op points timed for >= 2 backends."""
    points: dict = {}
    for r in result["records"]:
        if r.get("kind") == "ours" and r.get("mode") == "op" and r.get("status") == "ok" and r.get("time_us"):
            points.setdefault((r["spec"], r["n"], r["k"], r["m"]), {})[r["backend"]] = round(float(r["time_us"]), 3)
    return {key: t for key, t in points.items() if len(t) >= 2}


def derive(paths: list[Path]) -> list[DispatchTable]:
    tables: dict[str, DispatchTable] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        if result.get("smoke"):
            raise SystemExit(f"{path} is a CPU smoke run: its times mean nothing")
        env = result["environment"]
        entries = table_entries(result)
        if not entries:
            continue
        table = tables.setdefault(env["gpu"], DispatchTable(env["gpu"], {}, ""))
        rel = Path(path).resolve().relative_to(REPO) if Path(path).resolve().is_relative_to(REPO) else Path(path)
        table.source = "; ".join(filter(None, [table.source, (
            f"{rel}: nxm op (fp16 in/out, quantization included) timed side by side per backend, "
            f"commit {env.get('commit')}, {env.get('date', '')[:10]}, torch {env.get('torch')}, "
            f"triton {env.get('triton')}, driver {env.get('driver')}")]))
        by_bucket: dict = {}
        for (kind, n, k, m), times in sorted(entries.items()):
            by_bucket[(kind, n, k, m_bucket(m))] = times  # sorted by m: the bucket's largest timed M wins
        table.entries.update(by_bucket)
    return list(tables.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gemm_json", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    tables = derive(args.gemm_json)
    write_tables(args.out, tables)
    print(f"wrote {args.out}: " + ", ".join(f"{t.gpu}: {len(t.entries)} entries" for t in tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
