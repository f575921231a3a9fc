"""A tokenizer's own chat template: our labels equal TRL 1.16's, token by token, on ChatML (Qwen2.5), Llama 3 /
3.1 and Mistral v0.3 templates, multi-turn, with system and tool turns and a tools column. The references are
TRL's own dataset preparation (SFTTrainer._prepare_dataset, DPOTrainer._prepare_dataset) on the same rows."""

import pytest

from data.chat.chat_format import OwnFormat, chat_format
from data.chat.formats import Conversation, PreferencePair
from data.chat.preferences import encode_pair
from data.chat.rows import BadRow, Skipped
from data.chat.sft import encode_all
from data.chat.template import CHAT_TOKENS, IGNORE
from data.errors import DataError
from tests.chat_helpers import save_hf_tokenizer, template, trl_dpo, trl_sft

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

SYSTEM = {"role": "system", "content": "You answer briefly."}
TOOLS = [{"type": "function", "function": {"name": "get_time", "description": "The time in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CALL = {"role": "assistant", "content": "",
        "tool_calls": [{"type": "function", "id": "call12345", "function": {"name": "get_time", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "tool_call_id": "call12345", "name": "get_time", "content": "12:00"}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CHAT = [SYSTEM, user("What does `json.dumps` do?"), assistant("It serializes an object to a JSON string."),
        user("And naïve café 🐍?"), assistant("Unicode passes through.")]
WITH_TOOLS = [SYSTEM, user("What time is it in Paris?"), CALL, RESULT, assistant("It is noon."), user("Thanks!"),
              assistant("You are welcome.")]
# family, template, conversation, tools: the tool-aware templates get the tool conversation and a tools column
CASES = [
    ("qwen2_5", "qwen2_5", WITH_TOOLS, TOOLS),
    ("llama3", "llama3", CHAT, None),
    ("llama3", "llama3_1", WITH_TOOLS, TOOLS),
    ("mistral", "mistral", WITH_TOOLS, TOOLS),
]
TRAINING = [("qwen2_5", "qwen2_5_training", WITH_TOOLS, TOOLS), ("llama3", "llama3_training", CHAT, None)]


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """template name -> its TemplateFormat, from a saved tokenizer folder."""
    made = {}

    def get(family, name):
        if name not in made:
            folder = save_hf_tokenizer(tmp_path_factory.mktemp(name), family, template(name))
            made[name] = chat_format(str(folder))
        return made[name]

    return get


def with_tools(row, tools):
    return {**row, "tools": tools} if tools else row


@pytest.mark.parametrize("family,name,conversation,tools", TRAINING)
def test_generation_blocks_give_trls_assistant_only_loss(formats, tmp_path, family, name, conversation, tools):
    chat = formats(family, name)
    assert chat.generation
    ids, labels = chat.encode(conversation, tools)
    reference = trl_sft(chat, [with_tools({"messages": conversation}, tools)], tmp_path, assistant_only_loss=True)[0]
    assert ids == reference["input_ids"] and labels == reference["labels"]
    trained = chat.tokenizer.decode([t for t in labels if t != IGNORE])
    assert all(m["content"] in trained for m in conversation if m["role"] == "assistant")
    assert not any(m["content"] in trained for m in conversation if m["role"] in ("user", "system"))


@pytest.mark.parametrize("family,name,conversation,tools", CASES + TRAINING)
def test_prompt_completion_gives_trls_completion_mask(formats, tmp_path, family, name, conversation, tools):
    """Every assistant turn as the completion after the conversation before it: TRL's completion_only_loss."""
    chat = formats(family, name)
    turns = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    rows = [with_tools({"prompt": conversation[:i], "completion": conversation[i : i + 1]}, tools) for i in turns]
    references = trl_sft(chat, rows, tmp_path, assistant_only_loss=False)
    for turn, reference in zip(turns, references):
        ids, labels = chat.encode(conversation[: turn + 1], tools, train_from=turn)
        assert ids == reference["input_ids"], turn
        assert labels == reference["labels"], (turn, chat.tokenizer.decode([t for t in labels if t != IGNORE]))


@pytest.mark.parametrize("family,name,conversation,tools", CASES)
def test_without_generation_blocks_every_turn_is_found_by_its_prefixes(formats, tmp_path, family, name, conversation,
                                                                       tools):
    """Multi-turn: the labels of the whole conversation are, turn by turn, TRL's completion mask of that turn
    (each ends where the next prompt starts), and nothing outside the assistant turns. Mistral's template
    moves the tools to the last user turn: its earlier turns cannot be found so and are not trained."""
    chat = formats(family, name)
    assert not chat.generation
    ids, labels = chat.encode(conversation, tools)
    expected, located = [IGNORE] * len(ids), []
    for turn in (i for i, m in enumerate(conversation) if m["role"] == "assistant"):
        prefix_ids, prefix_labels = chat.encode(conversation[: turn + 1], tools, train_from=turn)
        if ids[: len(prefix_ids)] == prefix_ids:  # the conversation so far renders as the start of the whole
            expected[: len(prefix_labels)] = [e if e != IGNORE else p for e, p in zip(expected, prefix_labels)]
            located.append(turn)
    assert labels == expected
    turns = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    assert located == (turns[-1:] if name == "mistral" else turns)
    trained = chat.tokenizer.decode([t for t in labels if t != IGNORE])
    assert all(conversation[turn]["content"] in trained for turn in located)
    assert not any(m["content"] in trained for m in conversation if m["role"] in ("user", "system", "tool"))


@pytest.mark.parametrize("family,name,conversation,tools", CASES + TRAINING)
def test_preference_pairs_give_trls_dpo_tokens(formats, tmp_path, family, name, conversation, tools):
    chat = formats(family, name)
    prompt = conversation[:-1]
    pair = PreferencePair(prompt, "Gladly, any time.", "No.", "t", tools)
    encoded = encode_pair(chat, pair, max_length=10_000, skipped=Skipped())
    row = with_tools({"prompt": prompt, "chosen": [assistant(pair.chosen)], "rejected": [assistant(pair.rejected)]}, tools)
    reference = trl_dpo(chat, [row], tmp_path)[0]
    for side in ("chosen", "rejected"):
        ids, labels = getattr(encoded, f"{side}_ids"), getattr(encoded, f"{side}_labels")
        assert ids == reference["prompt_ids"] + reference[f"{side}_ids"]
        assert labels == [IGNORE] * len(reference["prompt_ids"]) + reference[f"{side}_ids"]


@pytest.mark.parametrize("family,name", [("qwen2_5", "qwen2_5"), ("llama3", "llama3")])
def test_standard_text_rows_are_trls_language_modelling(formats, tmp_path, family, name):
    chat = formats(family, name)
    texts = ["Plain text for language modelling.", "A second document, with EOS already" + chat.tokenizer.eos_token]
    references = trl_sft(chat, [{"text": t} for t in texts], tmp_path, assistant_only_loss=False)
    encoded = encode_all(chat, [Conversation([], "t", text=t) for t in texts])
    assert [(e.input_ids, e.labels) for e in encoded] == [(r["input_ids"], r["labels"]) for r in references]


def test_a_refused_conversation_is_counted_not_fatal(formats):
    chat = formats("mistral", "mistral")
    skipped = Skipped()
    alternating = Conversation([user("a"), assistant("b")], "ok")
    encoded = encode_all(chat, [Conversation([user("a"), user("b"), assistant("c")], "bad"), alternating], skipped)
    assert [e.where for e in encoded] == ["ok"]
    assert list(skipped.counts) == ["the chat template refused the conversation: After the optional system message, "
                                    "conversation roles must alternate user/assistant/user/assistant/..."]


def test_our_tokenizer_keeps_our_format_and_refuses_tools(tmp_path):
    from data.config import TokenizerConfig
    from data.tokenizer import save_tokenizer, special_ids, train_bpe
    from pydoc_data.topics import topics

    tokenizer = train_bpe([topics[n] for n in sorted(topics)][:40], TokenizerConfig(vocab_size=600))
    save_tokenizer(tokenizer, special_ids(tokenizer, {}, None), {}, None, tmp_path)
    chat = chat_format(str(tmp_path))
    assert isinstance(chat, OwnFormat) and chat.added == []
    with pytest.raises(BadRow, match="tools column needs a chat template"):
        chat.encode(CHAT, TOOLS)
    with pytest.raises(BadRow, match="tool calls and tool turns need a chat template"):
        chat.encode(WITH_TOOLS)


def test_an_asked_for_template_adds_its_missing_special_tokens(tmp_path):
    """A Llama-style tokenizer without ChatML tokens, asked for chatml: <|im_start|> and <|im_end|> are added as
    single special tokens; asked for our own format, our role tokens. Without a template of its own and
    without asking, it is an error naming the option."""
    tokens = ["<|begin_of_text|>", "<|eot_id|>"]
    folder = save_hf_tokenizer(tmp_path / "plain", "llama3", None, tokens=tokens)
    size = len(transformers.PreTrainedTokenizerFast.from_pretrained(str(folder)))
    with pytest.raises(DataError, match="data.chat_template=own"):
        chat_format(str(folder))
    chat = chat_format(str(folder), "chatml")
    assert chat.added == ["<|im_start|>", "<|im_end|>"] and chat.vocab_size == size + 2
    ids, labels = chat.encode([user("Hi"), assistant("Hello")])
    assert ids.count(size) == 2 and ids.count(size + 1) == 2  # each a single token
    assert chat.tokenizer.decode([t for t in labels if t != IGNORE]) == "Hello<|im_end|>"
    chat.save(tmp_path / "saved")
    assert chat_format(str(tmp_path / "saved")).vocab_size == size + 2  # the run's tokenizer keeps them
    own = chat_format(str(folder), "own")
    assert own.added == list(CHAT_TOKENS) and own.vocab_size == size + len(CHAT_TOKENS)


def test_a_template_file_is_read(tmp_path):
    folder = save_hf_tokenizer(tmp_path / "tok", "qwen2_5", template("qwen2_5"))
    jinja = tmp_path / "mine.jinja"
    jinja.write_text(template("llama3_training"))
    chat = chat_format(str(folder), str(jinja))
    assert chat.generation and chat.added == []  # its tokens are all there
    with pytest.raises(DataError, match="no such file; use auto, own, chatml or a .jinja file"):
        chat_format(str(folder), str(tmp_path / "missing.jinja"))
