"""The commands that read a model folder: passkey retrieval (prompt building and scoring), talking to a
model (its chat turns), and export; the deprecated `checkpoint=` spelling still works, with a message."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from common.paths import REPO
from data.chat.template import END_OF_TURN, encode_prompt
from train import passkey, talk
from train.model import build_model, save_model


@pytest.fixture(scope="module")
def model_dir(prepared_data, tmp_path_factory) -> Path:
    """A tiny random model folder with the prepared data's tokenizer (512 tokens, chat tokens reserved)."""
    torch.manual_seed(0)
    folder = save_model(build_model("llama3_tiny", vocab_size=512), tmp_path_factory.mktemp("m") / "model")
    shutil.copy(Path(prepared_data) / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def tokenizer(model_dir) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt_hides_the_key_at_its_depth(tokenizer, depth):
    ids = passkey.passkey_prompt(tokenizer, 1500, depth, 12345)
    text = tokenizer.decode(ids)
    assert 1400 <= len(ids) <= 1500 and text.count("12345") == 2 and text.rstrip().endswith("The pass key is")
    filler = passkey.FILLER.split(".")[0]
    before, after = text.split("The pass key is 12345")[0].count(filler), text.split("12345 is the pass key")[1].count(filler)
    assert before + after > 10 and before / (before + after) == pytest.approx(depth, abs=1 / (before + after))


def test_passkey_accuracy_counts_exact_answers(model_dir, tokenizer, monkeypatch):
    """A stand-in generator answers the key in two trials of three (the third: one digit off)."""
    answered = []

    def generate(model, prompt_ids, max_new_tokens):
        key = tokenizer.decode(prompt_ids[0].tolist()).split("The pass key is ")[1][:5]
        answer = key if len(answered) % 3 else str(int(key) + 1)
        answered.append(answer)
        return torch.cat([prompt_ids, torch.tensor([tokenizer.encode(f" {answer}.").ids])], dim=1)

    monkeypatch.setattr(passkey, "generate", generate)
    config = passkey.PasskeyConfig(model_dir=str(model_dir), context=64, multiples=[1.0, 2.0], depths=[0.5], trials=3)
    scores = passkey.passkey_accuracy(talk.load_model(model_dir), tokenizer, config)
    assert scores == {"1x": pytest.approx(2 / 3), "2x": pytest.approx(2 / 3)} and len(answered) == 6


def test_talk_keeps_the_conversation_and_stops_at_the_end_of_turn(model_dir, tokenizer, monkeypatch):
    prompts = []
    end = tokenizer.token_to_id(END_OF_TURN)

    def generate(model, prompt_ids, max_new_tokens, temperature, top_p, eos_token_id, generator):
        prompts.append(prompt_ids[0].tolist())
        reply = tokenizer.encode(f"answer {len(prompts)}").ids + [end] + tokenizer.encode("never shown").ids
        return torch.cat([prompt_ids, torch.tensor([reply])], dim=1)

    monkeypatch.setattr(talk, "generate", generate)
    chat = talk.Talk(model_dir, talk.TalkConfig(model_dir=str(model_dir), system="Be brief."))
    assert chat.answer("first?") == "answer 1" and chat.answer("second?") == "answer 2"
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first?"},
               {"role": "assistant", "content": "answer 1"}, {"role": "user", "content": "second?"}]
    assert prompts[1] == encode_prompt(tokenizer, history)  # the second prompt holds the whole conversation


def test_talk_tells_whether_the_turn_ended_and_shows_a_blank_answer(model_dir, tokenizer, monkeypatch):
    """A model that never saw the chat format may answer only newlines and spaces until max_new_tokens."""
    end = tokenizer.token_to_id(END_OF_TURN)
    replies = [tokenizer.encode("\n\n    ").ids, tokenizer.encode("fine").ids + [end]]

    def generate(model, prompt_ids, max_new_tokens, temperature, top_p, eos_token_id, generator):
        return torch.cat([prompt_ids, torch.tensor([replies.pop(0)])], dim=1)

    monkeypatch.setattr(talk, "generate", generate)
    chat = talk.Talk(model_dir, talk.TalkConfig(model_dir=str(model_dir)))
    blank = chat.answer("hello?")
    assert blank == "" and not chat.ended_turn and chat.shown(blank) == "(whitespace only: '\\n\\n    ')"
    assert chat.answer("and now?") == "fine" and chat.ended_turn and chat.shown("fine") == "fine"


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_commands_read_model_dir_and_the_old_checkpoint_spelling(model_dir, tmp_path):
    answered = run("train.talk", f"model_dir={model_dir}", "prompt='hi'", "max_new_tokens=4")
    assert answered.returncode == 0 and answered.stdout.splitlines()[0] == "user: hi", answered.stderr
    assert answered.stdout.splitlines()[1].startswith("assistant:")
    scored = run("train.passkey", f"checkpoint={model_dir}", "context=64", "multiples=[1]", "depths=[0.5]", "trials=1")
    assert scored.returncode == 0 and f"passkey accuracy ({model_dir}, original context 64): 1x" in scored.stdout
    assert "checkpoint= is now model_dir=" in scored.stderr
    missing = run("train.export", f"model_dir={model_dir}")
    assert missing.returncode != 0 and "give both model_dir=<model folder or step checkpoint> and out=<folder to write>" in missing.stderr
