"""The embedded SFT questions: enough of them, from real docstrings, varied, fast, and the same in every process."""

import hashlib
import json
import subprocess
import sys
from collections import Counter

import json as json_module

from data.chat.stdlib import QUESTIONS, conversations, entries

DIGEST = "import hashlib, json; from data.chat.stdlib import conversations as f; " \
         "print(hashlib.sha256(json.dumps([m for m, _ in f()]).encode()).hexdigest())"


def test_examples_answer_with_the_docstrings_first_paragraph():
    by_name = {e.name: e for e in entries()}
    assert 2000 <= len(by_name) == len(entries())  # a few thousand, each name once
    assert by_name["json.dumps"].answer == " ".join(json_module.dumps.__doc__.split("\n\n")[0].split())
    assert by_name["math.gcd"].answer == "Greatest Common Divisor."
    dialogues = [messages for messages, _ in conversations()]
    assert all(m[-1]["role"] == "assistant" and m[-2]["role"] == "user" for m in dialogues)
    # phrasing varies, and some conversations carry a system message
    phrasings = Counter(next(i for i, q in enumerate(QUESTIONS) if q.split("`")[0] in e.question[-1]["content"])
                        for e in entries())
    assert len(phrasings) == len(QUESTIONS) and min(phrasings.values()) > 0.1 * len(entries())
    with_system = sum(m[0]["role"] == "system" for m in dialogues)
    assert 0.2 * len(dialogues) < with_system < 0.5 * len(dialogues)


def test_deterministic_across_processes_and_fast():
    ours = hashlib.sha256(json.dumps([m for m, _ in conversations()]).encode()).hexdigest()
    timed = "import time; t = time.perf_counter(); " + DIGEST + "; print(time.perf_counter() - t)"
    digest, seconds = subprocess.run([sys.executable, "-c", timed], capture_output=True, text=True, check=True).stdout.split()
    assert digest == ours
    assert float(seconds) < 3.0  # imports of ~100 modules included
