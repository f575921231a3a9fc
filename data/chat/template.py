"""The chat format: one Jinja template for Hugging Face, and the same rendering in Python for training.

A conversation is a list of messages {"role": system|user|assistant, "content": str}. Every turn is

    <|role|>\\n{content}<|end_of_turn|>\\n

with the reserved role tokens of data/tokenizer.py, so each turn boundary is a single token that no
text can imitate. Training targets are the assistant turns' content and their closing <|end_of_turn|>
(the model must learn to stop); role headers, system and user turns get IGNORE. For generation the
prompt ends with the assistant header `<|assistant|>\\n`.

`CHAT_TEMPLATE` is what `tokenizer_config.json` stores: `transformers`' `apply_chat_template` renders
it, and its `{% generation %}` block gives `return_assistant_tokens_mask=True` the same assistant
tokens as `encode_conversation` here, which needs only the `tokenizers` library (tested token by
token in tests/data/chat/test_template.py). Newlines are written `{{ '\\n' }}` because transformers renders
with trim_blocks, which drops a literal newline after a block tag.
"""

from typing import Dict, List, Optional, Sequence, Tuple

from tokenizers import Tokenizer

from data.errors import DataError

IGNORE = -100  # the label of a token that gets no loss (prompts, padding); PyTorch's ignore_index
ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end_of_turn|>"
# Reserved as special tokens by data/tokenizer.py, so that SFT and DPO need no resizing of the embedding.
CHAT_TOKENS = tuple(f"<|{role}|>" for role in ROLES) + (END_OF_TURN,)
ASSISTANT_HEADER = "<|assistant|>\n"

Message = Dict[str, str]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end_of_turn|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|end_of_turn|>' }}"
    "{%- endif -%}"
    "{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' + '\\n' }}{%- endif -%}"
)


def header(role: str) -> str:
    return f"<|{role}|>\n"


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> Tuple[str, List[Tuple[int, int]]]:
    """The text CHAT_TEMPLATE renders, and the character spans [start, end) of the assistant turns'
    content + <|end_of_turn|> (what the template's generation blocks enclose)."""
    text, spans = "", []
    for message in messages:
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(f"unknown role {role!r}; use one of: {', '.join(ROLES)}")
        text += header(role)
        if role == "assistant":
            spans.append((len(text), len(text) + len(content) + len(END_OF_TURN)))
        text += content + END_OF_TURN + "\n"
    if add_generation_prompt:
        text += ASSISTANT_HEADER
    return text, spans


def check_chat_tokens(tokenizer: Tokenizer) -> None:
    missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise DataError(
            f"the tokenizer has no {', '.join(missing)} token(s), which this project's chat format needs and it "
            "carries no chat template of its own; use a tokenizer trained by `python -m data` (it reserves them), or "
            "set data.chat_template=own (adds them), chatml or <a .jinja file>"
        )


def encode_conversation(
    tokenizer: Tokenizer, messages: Sequence[Message], max_tokens: Optional[int] = None, train_from: int = 0
) -> Tuple[List[int], List[int]]:
    """(input_ids, labels): labels equal input_ids on assistant tokens (content and <|end_of_turn|>) of the
    messages from index `train_from` on (a prompt-completion row's completion, a DPO response), IGNORE
    elsewhere. Both lists are aligned (not shifted) and cut at the end to `max_tokens`."""
    check_chat_tokens(tokenizer)
    text, spans = render(messages)
    spans = spans[sum(m["role"] == "assistant" for m in messages[:train_from]):]
    encoding = tokenizer.encode(text, add_special_tokens=False)
    input_ids, labels = encoding.ids, [IGNORE] * len(encoding.ids)
    # A token belongs to an assistant turn when its characters overlap the turn's span: the rule of
    # transformers' apply_chat_template(return_assistant_tokens_mask=True).
    span = 0
    for index, (start, end) in enumerate(encoding.offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if end > spans[span][0]:
            labels[index] = input_ids[index]
    if max_tokens is not None:
        input_ids, labels = input_ids[:max_tokens], labels[:max_tokens]
    return input_ids, labels


def encode_prompt(tokenizer: Tokenizer, messages: Sequence[Message]) -> List[int]:
    """Token ids of the conversation so far followed by the assistant header: the input for generation."""
    check_chat_tokens(tokenizer)
    return tokenizer.encode(render(messages, add_generation_prompt=True)[0], add_special_tokens=False).ids
