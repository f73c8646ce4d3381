"""What every benchmark here shares besides the timer and the table (:mod:`nxm_kernels.timing`): the
machine's description, the card's peak numbers, rotating input sets, where results go, and stopping
cleanly when a time box runs out.

Without a GPU the benchmarks run in *smoke* mode: tiny shapes, the reference and interpreted-Triton
backends, a wall-clock timer. Their numbers prove the programs work end to end and mean nothing
else; every result file says ``"smoke": true`` then.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

# The Triton backend must see TRITON_INTERPRET before its kernels are defined (it is imported lazily
# by nxm_kernels, after this module), so a CPU-only run exercises the real kernels in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO / "benchmarks" / "results"

logger = logging.getLogger("benchmarks")


# ------------------------------------------------------------------------------------------- peaks
@dataclass(frozen=True)
class CardPeak:
    """Datasheet numbers the percentages are taken against (dense int8 tensor-core peak, HBM)."""

    card: str
    int8_dense_tops: float
    hbm_gbps: float
    source: str = "NVIDIA datasheet: dense int8 tensor TOPS (half the 'with sparsity' figure), memory GB/s"


# Device-name substrings (all must appear, lower case) -> peaks. The first match wins, so the more
# specific names come first ("gh200" before "h200", "l40s" before "l40" before "l4").
CARD_PEAKS: list[tuple[tuple[str, ...], CardPeak]] = [
    (("gh200",), CardPeak("GH200", 1979, 4000)),
    (("h200", "nvl"), CardPeak("H200 NVL", 1671, 4800)),
    (("h200",), CardPeak("H200 SXM", 1979, 4800)),
    (("h100", "pcie"), CardPeak("H100 PCIe", 1513, 2000)),
    (("h100", "nvl"), CardPeak("H100 NVL", 1671, 3900)),
    (("h100",), CardPeak("H100 SXM5", 1979, 3350)),  # "NVIDIA H100 80GB HBM3" is the SXM5 part
    (("a100", "pcie", "80gb"), CardPeak("A100 80GB PCIe", 624, 1935)),
    (("a100", "80gb"), CardPeak("A100 80GB SXM4", 624, 2039)),
    (("a100",), CardPeak("A100 40GB", 624, 1555)),
    (("l40s",), CardPeak("L40S", 733, 864)),
    (("l40",), CardPeak("L40", 362, 864)),
    (("l4",), CardPeak("L4", 242, 300)),
    (("a10",), CardPeak("A10", 250, 600)),
    (("6000", "ada"), CardPeak("RTX 6000 Ada", 728, 960)),
    (("a6000",), CardPeak("RTX A6000", 310, 768)),
    (("4090",), CardPeak("GeForce RTX 4090", 661, 1008)),
    (("3090",), CardPeak("GeForce RTX 3090", 284, 936)),
]


def card_peak(device_name: str, int8_tops: float | None = None, hbm_gbps: float | None = None) -> CardPeak | None:
    """The assumed peaks for a device name; explicit numbers (``--peak-tops``/``--peak-gbps``) win."""
    name = device_name.lower()
    found = next((peak for keys, peak in CARD_PEAKS if all(k in name for k in keys)), None)
    if int8_tops is None and hbm_gbps is None:
        return found
    return CardPeak(found.card if found else device_name,
                    int8_tops if int8_tops is not None else (found.int8_dense_tops if found else float("nan")),
                    hbm_gbps if hbm_gbps is not None else (found.hbm_gbps if found else float("nan")),
                    "given on the command line" + (f" (datasheet: {found.card})" if found else ""))


# ------------------------------------------------------------------------------------------- machine
def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken: reported as absent
        return None


def environment(device: torch.device) -> dict:
    """Everything a reader needs to trust (or reproduce) a result file."""
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # NXM_COMMIT names the checkout where there is no .git (gpu_validate.sh on a copied tree)
        "commit": _run(["git", "rev-parse", "--short=10", "HEAD"]) or os.environ.get("NXM_COMMIT") or "unknown",
        "dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "nxm_kernels": _version("nxm_kernels"),
        "device": str(device),
        "smoke": device.type != "cuda",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu": props.name,
            "capability": f"sm_{props.major}{props.minor}",
            "sm_count": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "l2_bytes": l2_bytes(device),
            "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                            str(device.index or 0)]),
            "cusparselt": _cusparselt_version(),
        })
    else:
        info["gpu"] = None
    return info


def _cusparselt_version():
    try:
        return torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def l2_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))


def run_name(env: dict) -> str:
    """``<gpu>-<date>-<commit>``: the folder name committed results use."""
    gpu = re.sub(r"[^a-z0-9]+", "-", (env.get("gpu") or "cpu").replace("NVIDIA", "").lower()).strip("-")
    return f"{gpu}-{env['date'][:10].replace('-', '')}-{env['commit']}"


def results_dir(out: str | None, env: dict, *, smoke: bool = False) -> Path:
    """``out`` if given, else ``$OUT`` if set, else ``benchmarks/results/<gpu>-<date>-<commit>/``; for a
    smoke run ``<temp dir>/nxm_kernels-smoke/<run name>/`` instead, so that numbers which mean nothing
    never land in the source tree beside committed results."""
    if out or os.environ.get("OUT"):
        path = Path(out or os.environ["OUT"])
    elif smoke:
        path = Path(tempfile.gettempdir()) / "nxm_kernels-smoke" / run_name(env)
    else:
        path = RESULTS_ROOT / run_name(env)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------- output
def _clean(obj):
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return _clean(asdict(obj))
    return obj


def write_json(path: Path, obj) -> None:
    """Write atomically, so a run killed by its time box leaves the last complete file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=1) + "\n")
    tmp.replace(path)


def report_goal(what: str, ratio: float, goal: float, result: dict, *, quick_note: str | None = None,
                json_path: Path | None = None) -> None:
    """The last lines of a CPU ratio benchmark (``bench_overhead.py``, ``bench_reference.py``): the ratio
    against its goal, why ``--quick`` numbers mean little (``quick_note``), and the JSON file when asked for."""
    print(f"  {what}: {ratio:.2f}x (goal <= {goal}x: {'met' if ratio <= goal else 'NOT met'})")
    if quick_note:
        print(f"  (--quick: {quick_note})")
    if json_path:
        write_json(json_path, result)


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` for a record's reason (the message may be empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def add_common_args(p) -> None:
    """The options every results-writing benchmark shares: ``--backends`` (:func:`our_backends`) and
    the output options (:func:`results_dir`)."""
    p.add_argument("--backends", help="our backends (default: cuda,triton on a GPU; reference,triton on a CPU)")
    p.add_argument("--out", help="output folder (default: $OUT, else benchmarks/results/<gpu>-<date>-<commit>; "
                                 "a smoke run's default is under the temp dir)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")


def our_backends(text: str | None, device: torch.device) -> list[str]:
    """``--backends`` as a list; by default cuda,triton on a GPU and reference,triton on a CPU."""
    if text:
        return text.split(",")
    return ["cuda", "triton"] if device.type == "cuda" else ["reference", "triton"]


def finish_results(path: Path, outdir: Path, result: dict, *, plot: Callable | None,
                   table: Callable[[dict], str]) -> None:
    """Write the results JSON, then (``plot`` given) the plots and the JSON again listing them; print the table."""
    write_json(path, result)
    if plot is not None:
        result["plots"] = [p.name for p in plot(result, outdir)]
        write_json(path, result)
    print(table(result))
    logger.info("wrote %s", path)


class TimeBoxExpired(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives (``timeout`` ran out): write what we have."""


def run_main(parser, run: Callable, argv: list[str] | None) -> dict:
    """The ``main`` of every results-writing benchmark: parse ``argv``, log to stderr (debug with ``-v``),
    turn SIGTERM (the time box) into :class:`TimeBoxExpired`, and return what ``run(args)`` returns."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    def handler(signum, _frame):
        raise TimeBoxExpired(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    return run(args)


def start(args, tiny: str) -> tuple[torch.device, bool, dict, dict]:
    """``(device, smoke, environment, backend status)`` for a run: the smoke mode when asked for, and
    forced (with a warning) without a GPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        logger.warning("no CUDA GPU: running the CPU smoke mode (%s, no timing claims)", tiny)
    return device, args.smoke or device.type != "cuda", environment(device), backend_status(device)


# ------------------------------------------------------------------------------------------- timing
# The timer itself is nxm_kernels.timing.measure (one timer, shared with `nxm demo`); this is what
# keeps the caches honest around it.
def rotation_count(bytes_per_set: int, device: torch.device, *, max_sets: int = 16,
                   budget_bytes: int = 2 * 2**30) -> int:
    """How many independent input sets to cycle through so that together they are >= 3x the L2
    (each call then finds its operands evicted), within a memory budget; 1 on a CPU."""
    l2 = l2_bytes(device)
    if l2 == 0:
        return 1
    want = math.ceil(3 * l2 / max(1, bytes_per_set))
    fit = max(2, budget_bytes // max(1, bytes_per_set))
    return int(max(2, min(want, max_sets, fit)))


class Rotation:
    """Cycles through prepared argument sets; ``fn()`` calls ``op(*next_set)``."""

    def __init__(self, op: Callable, sets: list[tuple]):
        if not sets:
            raise ValueError("Rotation needs at least one argument set")
        self.op, self.sets, self.i = op, sets, 0

    def __call__(self):
        args = self.sets[self.i]
        self.i = (self.i + 1) % len(self.sets)
        return self.op(*args)


def measure_copy_gbps(device: torch.device, nbytes: int = 2**29) -> float | None:
    """Achieved device-memory bandwidth of a plain copy (read + write), GB/s: a practical ceiling
    (None on a CPU, or when it cannot be measured)."""
    if device.type != "cuda":
        return None
    from nxm_kernels.timing import measure

    try:
        src = torch.empty(nbytes, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        ms = measure(lambda: dst.copy_(src), device, timer="do_bench", warmup_ms=10, rep_ms=50).median_ms
        del src, dst
        torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 - a ceiling we can do without
        logger.warning("could not measure the copy bandwidth: %s", exc)
        return None
    return 2 * nbytes / (ms * 1e-3) / 1e9


def backend_status(device: torch.device) -> dict[str, str | None]:
    """``{backend: None if it can run on device, else why not}``; never raises."""
    from nxm_kernels.backends import BACKENDS, unavailable_reason

    out = {}
    for name in BACKENDS:
        try:
            out[name] = unavailable_reason(name, device)
        except Exception as exc:  # noqa: BLE001 - a broken backend is reported, not fatal
            out[name] = f"{type(exc).__name__}: {exc}"
    return out

