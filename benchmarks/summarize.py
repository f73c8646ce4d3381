"""A compact summary of one results folder (``gemm.json``, ``e2e.json``, and, from
``gpu_validate.sh``, ``steps.tsv`` and ``gpu-tests.xml``), as plain text (printed last by the
validation script, so it must stay short) or Markdown (for the README).

    python benchmarks/summarize.py benchmarks/results/<run>/            # text
    python benchmarks/summarize.py benchmarks/results/<run>/ --markdown # README tables
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from nxm_kernels.timing import text_table

#: The like-for-like pairings shown in the headline: (our mode, baseline, short name).
PAIRINGS = [("op", "fp16-mm", "fp16"), ("gemm", "int8-mm", "int8"), ("gemm", "cslt-int8-2:4", "cslt")]
HEADLINE_SPECS = ("2:4-w8a8", "2:4-w4a8")
DETAIL_SHAPE = "3072x768"  # BERT-base FFN1: the absolute-time example


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def geomean(values: list[float]) -> float | None:
    vals = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def header(env: dict | None, folder: Path) -> list[str]:
    if not env:
        return [f"results: {folder}"]
    gpu = env.get("gpu") or "CPU (smoke run: no timing claims)"
    bits = [gpu]
    if env.get("capability"):
        bits.append(f"{env['capability']}, driver {env.get('driver') or '?'}")
    bits.append(f"torch {env['torch']} (CUDA {env.get('torch_cuda')}), triton {env.get('triton')}")
    dirty = " (uncommitted changes)" if env.get("dirty") else ""
    bits.append(f"{env['date'][:16]} UTC, commit {env['commit']}{dirty}")
    return ["nxm-kernels: " + "; ".join(bits), f"results: {folder}"]


def steps_lines(folder: Path) -> list[str]:
    path = folder / "steps.tsv"
    if not path.is_file():
        return []
    out = ["== steps"]
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        name, status, rc, secs = parts[:4]
        note = parts[4] if len(parts) > 4 else ""
        if name == "gpu-tests":
            note = (tests_line(folder) or note)
        out.append(f"  {name:<10} {status:<8} rc={rc:<4} {secs:>5}s  {note}"[:230])
    return out


def tests_line(folder: Path) -> str | None:
    path = folder / "gpu-tests.xml"
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return "gpu-tests.xml unreadable"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname', '').rsplit('.', 1)[-1]}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    text = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"
    if failed:
        text += "; failed: " + ", ".join(failed[:6]) + (" ..." if len(failed) > 6 else "")
    return text


def gemm_lines(g: dict, markdown: bool = False) -> list[str]:
    recs = g["records"]
    out = []
    counts = Counter(r["status"] for r in recs)
    out.append("== GEMM (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + " points"
               + ("; run STOPPED early" if g.get("stopped") else "") + (f"; ABORTED: {g['aborted']}" if g.get("aborted") else "")
               + ")")
    grouped: dict[str, list[str]] = {}  # one line per reason, naming the providers it sidelines
    for p in g["providers"]:
        if p["unavailable"]:
            grouped.setdefault(p["unavailable"], []).append(p["name"])
    for why, names in grouped.items():
        out.append(f"  unavailable: {', '.join(names)}: {why}"[:300])
    point_reasons: dict[str, list[dict]] = {}  # providers that run, but not at some points (shape rules...)
    never_run = {name for names in grouped.values() for name in names}
    for r in recs:
        if r["status"] == "unavailable" and r["provider"] not in never_run:
            point_reasons.setdefault(r["provider"], []).append(r)
    for name, rows in point_reasons.items():
        out.append(f"  unavailable at {len(rows)} points: {name}, e.g. {rows[0]['shape']} M={rows[0]['m']}: "
                   f"{rows[0].get('reason', '')}"[:300])
    bad = [r for r in recs if r["status"] in ("incorrect", "failed")]
    for r in bad[:8]:
        out.append(f"  {r['status'].upper()}: {r['provider']} {r['shape']} M={r['m']}: {r.get('reason', '')}"[:240])
    if len(bad) > 8:
        out.append(f"  ... and {len(bad) - 8} more incorrect/failed points (see gemm.json)")
    if g.get("peak"):
        pk = g["peak"]
        copy = f", measured copy {g['measured_copy_gbps']:.0f} GB/s" if g.get("measured_copy_gbps") else ""
        out.append(f"  peaks assumed ({pk['card']}): {pk['int8_dense_tops']:.0f} dense int8 TOPS, "
                   f"{pk['hbm_gbps']:.0f} GB/s HBM{copy}")

    goals = g.get("goals") or []
    if goals:
        out.append("== performance goals (worst point over shapes and M)")
        for gl in goals:
            if gl["worst"] is None:
                out.append(f"  [ -- ] {gl['goal']} (not measured)")
                continue
            mark = "MET " if gl["met"] else "MISS"
            unit = "%" if "HBM" in gl["goal"] else "x"
            out.append(f"  [{mark}] {gl['goal']}: worst {gl['worst']:.2f}{unit} at "
                       f"{gl['worst_at']['shape']} M={gl['worst_at']['m']}, median {gl['median']:.2f}{unit}")

    ms = list(dict.fromkeys(r["m"] for r in recs))
    shapes = list(dict.fromkeys(r["shape"] for r in recs))
    by = {(r["provider"], r["shape"], r["m"]): r for r in recs if r["status"] == "ok"}
    backends = list(dict.fromkeys(r["backend"] for r in recs if r["kind"] == "ours"))
    rows = []
    for b in backends:
        for spec in HEADLINE_SPECS:
            for mode, base, short in PAIRINGS:
                vals = []
                for m in ms:
                    pts = [by[(f"nxm-{b}-{spec}-{mode}", s, m)].get("speedup", {}).get(base) for s in shapes
                           if (f"nxm-{b}-{spec}-{mode}", s, m) in by]
                    vals.append(geomean([p for p in pts if p]))
                if any(v is not None for v in vals):
                    rows.append((f"{b} {spec} {mode} / {short}", vals))
    if rows:
        title = f"speedup, geometric mean over {len(shapes)} shapes (op: fp16 in/out incl. quantization; gemm: int8 in, int32 out)"
        out += _table(title, ["ours / baseline"] + [f"M={m}" for m in ms],
                      [[name] + [f"{v:.2f}x" if v else "-" for v in vals] for name, vals in rows], markdown)

    detail = DETAIL_SHAPE if DETAIL_SHAPE in shapes else (shapes[0] if shapes else None)
    if detail:
        provs = list(dict.fromkeys(r["provider"] for r in recs if r["shape"] == detail and r["status"] == "ok"
                                   and (r["kind"] == "baseline" or r["spec"] in HEADLINE_SPECS)))
        table = [[p] + [f"{by[(p, detail, m)]['time_us']:.1f}" if (p, detail, m) in by else "-" for m in ms]
                 for p in provs]
        if table:
            out += _table(f"{detail}: median us per call", ["provider"] + [f"M={m}" for m in ms], table, markdown)
    return out


def e2e_lines(e: dict, markdown: bool = False) -> list[str]:
    recs = e["records"]
    out = [f"== end to end{' (run STOPPED early)' if e.get('stopped') else ''}"]
    for c in e.get("checks", []):
        if not c["ok"]:
            out.append(f"  CHECK FAILED {c['model']} {c['variant']}: cosine {c['mean_token_cosine']:.4f} vs reference")
    for r in recs:
        if r["status"] in ("failed", "incorrect"):
            out.append(f"  {r['status'].upper()}: {r['model']} {r['variant']} {r['batch']}x{r['seq']} {r['mode']}: "
                       f"{r.get('reason', '')}"[:220])
    absent = {(r["variant"], r.get("reason")) for r in recs if r["status"] == "unavailable" and r["mode"] == "eager"}
    for variant, why in sorted(absent, key=str):
        out.append(f"  unavailable: {variant}: {why}"[:220])
    for model in dict.fromkeys(r["model"] for r in recs):
        rows = [r for r in recs if r["model"] == model]
        shapes = list(dict.fromkeys((r["batch"], r["seq"]) for r in rows))
        ok = {(r["variant"], r["batch"], r["seq"], r["mode"]): r for r in rows if r["status"] == "ok"}

        def cell(r):  # the speedup is against the HF record of the same mode and compile state
            if r is None:
                return "-"
            sp = r.get("speedup")
            return f"{r['p50_ms']:.2f}" + (f" ({sp:.2f}x)" if sp and r["kind"] != "hf" else "")
        table = [[v] + [" / ".join(cell(ok.get((v, b, s, mode))) for mode in ("eager", "graph")) for b, s in shapes]
                 for v in dict.fromkeys(r["variant"] for r in rows)]
        table = [row for row in table if any(c != "- / -" for c in row[1:])]
        bases = list(dict.fromkeys(r["speedup_baseline"] for r in rows if r.get("speedup_baseline")))
        ratios = (f"speedup vs {', '.join(bases)}: same mode and compile state" if bases else
                  "no speedup ratios" + (" (CPU smoke run)" if e.get("smoke") else ""))
        if table:
            out += _table(f"{model}: p50 ms eager / CUDA graph ({ratios})",
                          ["variant"] + [f"{b}x{s}" for b, s in shapes], table, markdown)
    return out


def _table(title: str, head: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    lines = text_table(head, rows, markdown).splitlines()
    return [f"\n**{title}**\n", *lines] if markdown else [f"-- {title}"] + ["  " + line for line in lines]


def summarize(folder: Path, markdown: bool = False) -> str:
    g, e = _load(folder / "gemm.json"), _load(folder / "e2e.json")
    env = (g or e or {}).get("environment") or _load(folder / "environment.json")
    lines = header(env, folder) + steps_lines(folder)
    for result, render, missing in ((g, gemm_lines, "== GEMM: no gemm.json"),
                                    (e, e2e_lines, "== end to end: no e2e.json")):
        lines += render(result, markdown) if result else [missing]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--write", type=Path, help="also write the summary to this file")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        print(f"summarize: {args.folder} is not a folder", file=sys.stderr)
        return 2
    text = summarize(args.folder, args.markdown)
    if args.write:
        args.write.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
