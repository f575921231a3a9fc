"""The embedded default for SFT and DPO: questions about the Python standard library, answered by its docstrings.

Offline and deterministic for a Python version: a fixed list of modules is walked, and every public
function, class and method with a docstring becomes one question ("What does `json.dumps` do?", phrased
one of a few ways chosen by a checksum of the name, with a system message on some) answered by the first
paragraph of its docstring. A preference pair asks the same question with the right description chosen and another
function's description rejected (a different function, also chosen by checksum): a model that learned the
SFT data should put more probability on the chosen one, so reward accuracy on held-out pairs is meaningful.

The walk runs in a fresh interpreter without site-packages (`python -I -S this_file`): libraries imported
by the caller patch the standard library (transformers adds methods to logging.Logger, pytest replaces
sys.unraisablehook), which would change the examples, and with them the held-out split, from one
process to the next. This file therefore imports only the standard library at its top.
"""

import functools
import importlib
import inspect
import json
import subprocess
import sys
import zlib
from dataclasses import dataclass
from typing import List, Tuple

MODULES = (
    "builtins", "abc", "argparse", "array", "base64", "binascii", "bisect", "calendar", "cmath", "codecs", "collections",
    "colorsys", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "email.utils", "enum", "filecmp", "fnmatch", "fractions", "functools", "getopt",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "keyword", "linecache", "locale", "logging", "lzma", "math", "mimetypes", "numbers",
    "operator", "os", "os.path", "pathlib", "pickle", "platform", "pprint", "queue", "quopri", "random", "re",
    "sched", "secrets", "selectors", "shlex", "shutil", "signal", "smtplib", "socket", "statistics", "string",
    "struct", "subprocess", "sys", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "token",
    "tokenize", "traceback", "types", "typing", "unicodedata", "urllib.parse", "urllib.request", "uuid",
    "warnings", "weakref", "xml.etree.ElementTree", "zipfile", "zlib",
)
QUESTIONS = (
    "What does `{name}` do?",
    "What is `{name}` for?",
    "Explain `{name}` briefly.",
    "Describe `{short}` from the `{module}` module.",
    "In Python, what is `{name}`?",
)
SYSTEMS = (
    "You are a concise assistant who knows the Python standard library.",
    "Answer questions about Python in one paragraph.",
)


@dataclass
class Entry:
    name: str  # qualified: json.dumps
    question: List[dict]  # the prompt messages
    answer: str  # the first paragraph of the docstring


def checksum(text: str) -> int:
    """A stable hash (Python's hash() of str changes per process)."""
    return zlib.crc32(text.encode())


def first_paragraph(doc: str, short: str) -> str:
    """The first paragraph that is not a signature line ("dumps(obj, ...)"), on one line."""
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(line.strip() for line in paragraph.splitlines()).strip()
        if text and not text.startswith(f"{short}("):
            return text
    return ""


def public_objects(module_name: str):
    """(name inside the module, object): public functions and classes, and the public methods a class defines."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # an optional module this Python was built without (e.g. lzma)
        return
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for short in sorted(set(names)):
        obj = getattr(module, short, None)
        if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj):
            yield short, obj
        if inspect.isclass(obj):
            for method, member in sorted(vars(obj).items()):
                if not method.startswith("_") and (inspect.isroutine(member) or isinstance(member, (classmethod, staticmethod))):
                    yield f"{short}.{method}", getattr(obj, method)


def documented() -> List[Tuple[str, str, str]]:
    """(module, name inside it, answer) for every documented public function, class and method of MODULES,
    in order; an object re-exported by a later module keeps its first name."""
    seen, found = {}, []  # id -> object: holding it keeps the id from being reused by a later object
    for module_name in MODULES:
        for short, obj in public_objects(module_name):
            # the object's own docstring: inspect.getdoc would inherit a base class's
            answer = first_paragraph(obj.__doc__, short) if isinstance(obj.__doc__, str) else ""
            if id(obj) not in seen and 20 <= len(answer) <= 800:
                seen[id(obj)] = obj
                found.append((module_name, short, answer))
    return found


@functools.lru_cache(maxsize=1)
def entries() -> Tuple[Entry, ...]:
    """The questions and answers, walked in a pristine interpreter (see the module's docstring)."""
    walk = subprocess.run([sys.executable, "-I", "-S", __file__], capture_output=True, text=True, check=True)
    found = []
    for module_name, short, answer in json.loads(walk.stdout):
        name = f"{module_name}.{short}"
        code = checksum(name)
        question = QUESTIONS[code % len(QUESTIONS)].format(name=name, short=short, module=module_name)
        system = [{"role": "system", "content": SYSTEMS[code // 7 % len(SYSTEMS)]}] if code % 3 == 0 else []
        found.append(Entry(name, system + [{"role": "user", "content": question}], answer))
    return tuple(found)


def conversations() -> List[Tuple[List[dict], str]]:
    """(messages, location) of every entry: its question answered by its docstring."""
    return [(e.question + [{"role": "assistant", "content": e.answer}], f"stdlib:{e.name}") for e in entries()]


def preference_pairs() -> List[Tuple[List[dict], str, str, str]]:
    """(prompt messages, chosen, rejected, location) of every other entry (by checksum): its description
    chosen, another entry's rejected."""
    all_entries = entries()
    pairs = []
    for index, entry in enumerate(all_entries):
        code = checksum(entry.name)
        if code % 2:
            continue
        other = (index + 1 + code % (len(all_entries) - 1)) % len(all_entries)  # never index itself
        while all_entries[other].answer == entry.answer:
            other = (other + 1) % len(all_entries)
        pairs.append((entry.question, entry.answer, all_entries[other].answer, f"stdlib:{entry.name}"))
    return pairs


if __name__ == "__main__":
    print(json.dumps(documented()))
