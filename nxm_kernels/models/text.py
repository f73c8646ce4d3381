"""Built-in English text for calibration and evaluation, with no download: standard-library docstrings.

Every Python install carries prose in the docstrings of its standard library. This module splits them
into sentences, by module, and splits the modules (by a stable hash) into a *calibration/training*
share and a *held-out* share, so text used to calibrate or train never comes from the modules used to
evaluate. The demo's evaluation sentences (:data:`SENTENCES`, hand-written, also importable from
:mod:`nxm_kernels.models.zoo`) are disjoint from both by construction, and :func:`calibration_sentences`
drops any that would coincide.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
import zlib

from .._checks import check_int

__all__ = ["SENTENCES", "STDLIB", "docstring_sentences", "is_held_out", "split_sentences", "calibration_sentences",
           "heldout_sentences"]

#: Hand-written English sentences, the demo's and the built-in MiniLM's evaluation inputs (embedding
#: cosine against the float model); disjoint from the standard-library text.
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome and the actors were great.",
    "A woman is slicing tomatoes in the kitchen.",
    "Two dogs are running through a snowy field.",
    "The stock market fell sharply after the announcement.",
    "How do I reset my password?",
    "The weather will be sunny with a light breeze tomorrow.",
    "She plays the violin in the city orchestra.",
    "The train to Berlin leaves at half past nine.",
    "Quantum computers use qubits instead of bits.",
    "Please turn off the lights when you leave the room.",
    "A child is riding a red bicycle down the street.",
    "The recipe calls for two cups of flour and one egg.",
    "Our team won the championship after a long season.",
    "The museum is closed on Mondays.",
    "He forgot his umbrella and got soaked in the rain.",
    "Sparse matrices store only their non-zero entries.",
    "The cat is sleeping on the warm windowsill.",
    "Can you recommend a good book about history?",
    "The conference was postponed until next spring.",
    "A chef is preparing pasta with fresh basil.",
    "The airplane landed safely despite the storm.",
    "Students are studying for their final exams in the library.",
    "The river flows slowly through the green valley.",
    "My phone battery drains too quickly.",
    "The company released a new version of its software.",
    "A group of friends is having a picnic in the park.",
    "The doctor advised him to get more sleep.",
    "Electric cars are becoming more affordable every year.",
    "The children built a sandcastle on the beach.",
    "This restaurant serves the best pizza in town.",
    "The telescope captured images of a distant galaxy.",
]

# Pure-Python, side-effect-free standard library modules with plenty of prose docstrings.
STDLIB = ["argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
          "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
          "enum", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
          "hashlib", "heapq", "hmac", "html", "http.client", "http.server", "imaplib", "inspect", "io",
          "ipaddress", "json", "logging", "logging.handlers", "lzma", "mailbox", "mimetypes", "multiprocessing",
          "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform",
          "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
          "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
          "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
          "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse", "urllib.request", "uuid",
          "warnings", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo"]

#: Share of modules (by hash) whose sentences are held out for evaluation.
HELD_OUT_SHARE = 0.2


def _module_sentences(name: str) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(name)
    except Exception:  # an optional module missing from this Python is fine
        return []
    docs = [inspect.getdoc(mod) or ""]
    for _, obj in inspect.getmembers(mod):
        if getattr(obj, "__module__", None) == mod.__name__ and (inspect.isclass(obj) or inspect.isfunction(obj)):
            docs.append(inspect.getdoc(obj) or "")
            if inspect.isclass(obj):
                docs += [inspect.getdoc(f) or "" for _, f in inspect.getmembers(obj, inspect.isfunction)
                         if getattr(f, "__module__", None) == mod.__name__]
    sents = set()
    for doc in docs:
        for para in re.split(r"\n\s*\n", doc):
            text = " ".join(para.split())
            if not text or text.startswith((">>>", "...")) or "::" in text:
                continue
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                letters = sum(c.isalpha() for c in s)
                if 30 <= len(s) <= 300 and letters > 0.7 * len(s) and len(s.split()) >= 5:
                    sents.add(s)
    return sorted(sents)


def docstring_sentences(modules=STDLIB) -> dict[str, list[str]]:
    """English sentences from the docstrings of ``modules`` (and their classes and functions), by module."""
    out = {}
    for name in modules:
        sents = _module_sentences(name)
        if sents:
            out[name] = sents
    return out


def is_held_out(name: str, share: float = HELD_OUT_SHARE) -> bool:
    """Whether module ``name``'s sentences are held out for evaluation (a stable hash of the name)."""
    return zlib.crc32(name.encode()) % 1000 < share * 1000


def split_sentences(by_module: dict, held_out_share: float = HELD_OUT_SHARE):
    """``(train, held)``: held-out sentences come from other modules than the training ones (a stable
    hash of the module name), each list shuffled with a fixed seed."""
    train, held = [], []
    for name, sents in by_module.items():
        (held if is_held_out(name, held_out_share) else train).extend(sents)
    rng = random.Random(0)
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def calibration_sentences(n: int = 512) -> list[str]:
    """``n`` sentences from the calibration/training modules (never the held-out ones, never the demo's
    evaluation sentences); the same list on every call with the same Python."""
    check_int("n", n, minimum=1)
    # A sentence can appear in two modules (shared or inherited docstrings): drop the held-out ones too.
    avoid = set(SENTENCES) | set(heldout_sentences())
    train, _ = split_sentences(docstring_sentences([m for m in STDLIB if not is_held_out(m)]))
    out = [s for s in train if s not in avoid][:n]
    if not out:
        raise RuntimeError("no standard-library docstring text found for calibration (a stripped Python?)")
    return out


def heldout_sentences(n: int | None = None) -> list[str]:
    """Sentences from the held-out modules (for evaluation), at most ``n``."""
    _, held = split_sentences(docstring_sentences([m for m in STDLIB if is_held_out(m)]))
    return held if n is None else held[:n]
