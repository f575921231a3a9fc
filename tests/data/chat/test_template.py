"""Chat template: our tokens-only encoding equals transformers' rendering of the saved template, token by token."""

import json

import pytest

from data.chat.template import CHAT_TEMPLATE, IGNORE, encode_conversation, encode_prompt
from data.config import TokenizerConfig
from data.errors import DataError
from data.tokenizer import save_tokenizer, special_ids, train_bpe

MULTI_TURN = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What does `json.dumps` do?"},
    {"role": "assistant", "content": " Serialize ``obj`` to a JSON formatted ``str``.\n\nThat is all."},
    {"role": "user", "content": "\nAnd naïve café 🐍 日本語?"},
    {"role": "assistant", "content": "\n\nUnicode passes through."},
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from pydoc_data.topics import topics

    tokenizer = train_bpe([topics[n] for n in sorted(topics)][:40], TokenizerConfig(vocab_size=600))
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(tokenizer, special_ids(tokenizer, {}, None), {}, None, folder)
    return tokenizer, folder


def test_saved_config_holds_the_template(saved):
    _, folder = saved
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_a_loaded_tokenizers_own_template_is_kept(saved, tmp_path):
    tokenizer, _ = saved
    theirs = {"chat_template": "{{ messages[0]['content'] }}"}
    save_tokenizer(tokenizer, special_ids(tokenizer, {}, None), theirs, None, tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == theirs["chat_template"]


def test_labels_match_transformers_assistant_mask_token_by_token(saved):
    transformers = pytest.importorskip("transformers")
    tokenizer, folder = saved
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    reference = hf.apply_chat_template(MULTI_TURN, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
    input_ids, labels = encode_conversation(tokenizer, MULTI_TURN)
    assert input_ids == reference["input_ids"]
    for position, (token, label, mask) in enumerate(zip(input_ids, labels, reference["assistant_masks"])):
        assert label == (token if mask else IGNORE), (position, tokenizer.id_to_token(token))
    # what is labelled: both assistant contents with their <|end_of_turn|>, and nothing else
    end_of_turn = tokenizer.token_to_id("<|end_of_turn|>")
    labelled = [t for t in labels if t != IGNORE]
    assert tokenizer.decode(labelled, skip_special_tokens=False) == (
        MULTI_TURN[2]["content"] + "<|end_of_turn|>" + MULTI_TURN[4]["content"] + "<|end_of_turn|>"
    )
    assert labelled.count(end_of_turn) == 2 and input_ids.count(end_of_turn) == 5


def test_generation_prompt_matches_transformers(saved):
    transformers = pytest.importorskip("transformers")
    tokenizer, folder = saved
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    expected = hf.apply_chat_template(MULTI_TURN[:4], add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt = encode_prompt(tokenizer, MULTI_TURN[:4])
    assert prompt == expected["input_ids"]
    assert tokenizer.decode(prompt[-2:], skip_special_tokens=False) == "<|assistant|>\n"
    # the prompt is a prefix of the full conversation: generation continues where training saw the answer
    assert encode_conversation(tokenizer, MULTI_TURN)[0][: len(prompt)] == prompt


def test_truncation_and_last_turn_only(saved):
    tokenizer, _ = saved
    full_ids, full_labels = encode_conversation(tokenizer, MULTI_TURN)
    ids, labels = encode_conversation(tokenizer, MULTI_TURN, max_tokens=20)
    assert (ids, labels) == (full_ids[:20], full_labels[:20])
    _, last = encode_conversation(tokenizer, MULTI_TURN, train_from=len(MULTI_TURN) - 1)
    first_reply_end = len(encode_prompt(tokenizer, MULTI_TURN[:4]))
    assert all(label == IGNORE for label in last[:first_reply_end])
    assert last[first_reply_end:] == full_labels[first_reply_end:]


def test_bad_input_is_named(saved):
    from tokenizers import Tokenizer, models

    tokenizer, _ = saved
    with pytest.raises(DataError, match="unknown role 'tool'"):
        encode_conversation(tokenizer, [{"role": "tool", "content": "x"}])
    with pytest.raises(DataError, match="no <\\|system\\|>"):
        encode_conversation(Tokenizer(models.BPE()), MULTI_TURN)
