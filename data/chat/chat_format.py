"""How conversations become token ids and labels for the run's tokenizer: one `ChatFormat`, picked from the
tokenizer folder by `chat_format(folder, data.chat_template)`.

    OwnFormat       this project's tokenizer and format (data/chat/template.py), rendered in Python with the
                    `tokenizers` library alone: the default for a tokenizer trained by `python -m data`
    TemplateFormat  a Hugging Face tokenizer's own Jinja chat template (tokenizer_config.json's chat_template
                    or chat_template.jinja), rendered by transformers' apply_chat_template, with `tools`

Labels follow TRL 1.16's dataset preparation (tested token by token in tests/data/chat/test_chat_format.py):
- a template with `{% generation %}` blocks: their tokens (`return_assistant_tokens_mask`), as TRL's
  `assistant_only_loss`;
- otherwise each assistant turn is found by rendering prefixes: its tokens start where the tokens of the
  conversation before it (with the generation prompt) stop being a prefix of the whole, and end where those
  of the conversation up to its end do (the last turn runs to the end): TRL's completion mask, turn by turn.
  A turn whose preceding conversation the template renders differently inside the whole (Mistral's moves
  the tools to the last user turn) cannot be found so and is not trained; the last turn always can.
A prompt-completion row trains its completion only (`train_from`); a DPO response is the tokens after the
prompt both sides share (TRL's shorter of the two common prefixes).

`data.chat_template` overrides the choice: `own` (this project's format), `chatml`, or a .jinja file. The
special tokens the template writes as `<|...|>` literals (or, for `own`, its role tokens) that the tokenizer
lacks are added; the model's vocabulary then grows to fit (train/stages.py, new rows the mean of the old).
"""

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from tokenizers import Tokenizer

from data.chat.rows import BadRow
from data.chat.template import CHAT_TEMPLATE, CHAT_TOKENS, IGNORE, ROLES, Message, check_chat_tokens, encode_conversation
from data.errors import DataError
from data.tokenizer import PAD, save_tokenizer, special_ids

Encoded = Tuple[List[int], List[int]]  # (input_ids, labels), aligned, labels IGNORE where nothing is trained
GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
TOKEN_LITERAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")

# ChatML as Qwen2.5 writes it, without its default system prompt and tools, with generation blocks.
CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
NAMED = {"chatml": CHATML}


def common_prefix(ids: Sequence[int], other: Sequence[int]) -> int:
    """How many leading tokens two sequences share (TRL's common_prefix_length)."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


class ChatFormat:
    """Conversations -> (input_ids, labels); what the cache fingerprint and the model's vocabulary need to know."""

    name: str  # own | template
    pad_id: int
    vocab_size: int  # tokens, the added ones included
    added: List[str]  # special tokens added to the tokenizer for the template
    fingerprint: str  # the tokenizer and template, hashed: part of the tokenized cache's key

    def encode(self, messages: List[Message], tools: Optional[list] = None, train_from: int = 0) -> Encoded:
        raise NotImplementedError

    def encode_pair(self, prompt: List[Message], chosen: List[Message], rejected: List[Message],
                    tools: Optional[list] = None) -> Tuple[Encoded, Encoded]:
        raise NotImplementedError

    def encode_text(self, text: str) -> List[int]:
        """A standard language-modelling row: its tokens with EOS at the end, every one trained."""
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        """tokenizer.json + tokenizer_config.json (with the template) as this run trains with them."""
        raise NotImplementedError


class OwnFormat(ChatFormat):
    name = "own"

    def __init__(self, tokenizer: Tokenizer, hf_config: dict, added: List[str]):
        check_chat_tokens(tokenizer)
        self.tokenizer, self.hf_config, self.added = tokenizer, hf_config, added
        self.pad_id = tokenizer.token_to_id(PAD) or 0
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.fingerprint = hashlib.sha256((tokenizer.to_str() + CHAT_TEMPLATE).encode()).hexdigest()[:16]

    def encode(self, messages, tools=None, train_from=0):
        if tools:
            raise BadRow("a tools column needs a chat template that renders tools (data.chat_template)")
        if any(m["role"] not in ROLES or m.get("tool_calls") for m in messages):
            raise BadRow("tool calls and tool turns need a chat template that renders them (data.chat_template)")
        return encode_conversation(self.tokenizer, messages, train_from=train_from)

    def encode_pair(self, prompt, chosen, rejected, tools=None):
        return tuple(self.encode(prompt + reply, tools, train_from=len(prompt)) for reply in (chosen, rejected))

    def encode_text(self, text):
        eos = special_ids(self.tokenizer, self.hf_config, None).eos
        return self.tokenizer.encode(text, add_special_tokens=False).ids + [eos]

    def save(self, folder):
        save_tokenizer(self.tokenizer, special_ids(self.tokenizer, self.hf_config, None), self.hf_config, None, folder)


class TemplateFormat(ChatFormat):
    name = "template"

    def __init__(self, tokenizer, template: str, added: List[str]):
        """`tokenizer`: a transformers PreTrainedTokenizerFast; `template`: the Jinja chat template."""
        self.tokenizer, self.template, self.added = tokenizer, template, added
        self.generation = GENERATION.search(template) is not None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        self.vocab_size = len(tokenizer)
        backend = tokenizer.backend_tokenizer.to_str()
        self.fingerprint = hashlib.sha256((backend + template + json.dumps(tokenizer.special_tokens_map, sort_keys=True,
                                                                           default=str)).encode()).hexdigest()[:16]

    def render(self, messages: List[Message], tools: Optional[list], **options) -> dict:
        from jinja2.exceptions import TemplateError

        try:
            return self.tokenizer.apply_chat_template(messages, tools=tools or None, chat_template=self.template,
                                                      tokenize=True, return_dict=True, **options)
        except (TemplateError, ValueError, TypeError) as error:  # e.g. the template's raise_exception
            raise BadRow(f"the chat template refused the conversation: {str(error).splitlines()[0]}") from None

    def prompt_length(self, prompt: List[Message], ids: List[int], tools: Optional[list]) -> int:
        """Where the reply after `prompt` starts in `ids`: their common prefix with the prompt rendered alone."""
        if not prompt:
            return 0
        return common_prefix(self.render(prompt, tools, add_generation_prompt=True)["input_ids"], ids)

    def renders_as_prefix(self, before: List[Message], ids: List[int], tools: Optional[list]) -> bool:
        """Whether the conversation before a turn renders as the start of the whole (Mistral's template, for one,
        moves the tools to the last user turn): only then can the turn be found by its prefixes."""
        if not before:
            return True
        alone = self.render(before, tools)["input_ids"]
        return common_prefix(alone, ids) == len(alone)

    def encode(self, messages, tools=None, train_from=0):
        if self.generation:
            rendered = self.render(messages, tools, return_assistant_tokens_mask=True)
            ids, keep = rendered["input_ids"], [bool(m) for m in rendered["assistant_masks"]]
            start = self.prompt_length(messages[:train_from], ids, tools)
            keep[:start] = [False] * min(start, len(keep))
        else:
            ids = self.render(messages, tools)["input_ids"]
            keep = [False] * len(ids)
            for turn, message in enumerate(messages):
                if message["role"] != "assistant" or turn < train_from or not self.renders_as_prefix(messages[:turn], ids, tools):
                    continue
                start = self.prompt_length(messages[:turn], ids, tools)
                end = len(ids) if turn == len(messages) - 1 else \
                    common_prefix(self.render(messages[: turn + 1], tools)["input_ids"], ids)
                keep[start:end] = [True] * max(end - start, 0)
        return ids, [token if kept else IGNORE for token, kept in zip(ids, keep)]

    def encode_pair(self, prompt, chosen, rejected, tools=None):
        sides = [self.render(prompt + reply, tools)["input_ids"] for reply in (chosen, rejected)]
        start = min(self.prompt_length(prompt, ids, tools) for ids in sides)
        return tuple((ids, [IGNORE] * start + ids[start:]) for ids in sides)

    def encode_text(self, text):
        eos = self.tokenizer.eos_token
        return self.tokenizer(text if eos is None or text.endswith(eos) else text + eos)["input_ids"]

    def save(self, folder):
        self.tokenizer.chat_template = self.template
        self.tokenizer.save_pretrained(str(folder), save_jinja_files=False)  # the template in tokenizer_config.json


def as_chat_format(chat: Union[ChatFormat, Tokenizer]) -> ChatFormat:
    """A ChatFormat as it is; a bare `tokenizers.Tokenizer` is this project's format on it."""
    return chat if isinstance(chat, ChatFormat) else OwnFormat(chat, {}, [])


def folder_template(folder: Path, hf_config: dict) -> Optional[str]:
    """The tokenizer's own chat template: chat_template.jinja (transformers 5) or tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    template = jinja.read_text() if jinja.is_file() else hf_config.get("chat_template")
    return template if isinstance(template, str) else None


def chosen_template(choice: str, own: Optional[str]) -> str:
    """The template text `data.chat_template` names: auto (the tokenizer's own; ours when it has none), own,
    chatml, or a .jinja file."""
    if choice == "auto":
        return own or CHAT_TEMPLATE
    if choice == "own":
        return CHAT_TEMPLATE
    if choice in NAMED:
        return NAMED[choice]
    path = Path(choice)
    if not path.is_file():
        raise DataError(f"data.chat_template={choice!r}: no such file; use auto, own, {', '.join(NAMED)} or a .jinja file")
    return path.read_text()


@functools.lru_cache(maxsize=4)
def chat_format(folder: str, choice: str = "auto") -> ChatFormat:
    """The chat format of the tokenizer in `folder` (tokenizer.json, tokenizer_config.json) under
    `data.chat_template=choice`. Missing special tokens are added only when the choice is explicit."""
    path = Path(folder)
    config_file = path / "tokenizer_config.json"
    hf_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template = chosen_template(choice, folder_template(path, hf_config))
    if template == CHAT_TEMPLATE:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        added = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None] if choice != "auto" else []
        tokenizer.add_special_tokens(added)
        return OwnFormat(tokenizer, {k: v for k, v in hf_config.items() if k != "chat_template"}, added)
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    vocab = tokenizer.get_vocab()
    added = [] if choice == "auto" else \
        [t for t in dict.fromkeys(TOKEN_LITERAL.findall(template)) if t not in vocab]
    tokenizer.add_tokens(added, special_tokens=True)
    return TemplateFormat(tokenizer, template, added)
