"""Train a byte-level BPE tokenizer, or load an existing one, and save it in Hugging Face's layout.

Byte-level BPE (GPT-2's scheme, as in the `tokenizers` library) has no unknown token: every string
round-trips, decode(encode(text)) == text. The special tokens for documents (BOS/EOS/PAD) and for chat
roles are reserved now so that SFT and DPO later need no resizing of the embedding.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data.chat.template import CHAT_TEMPLATE, CHAT_TOKENS
from data.config import TokenizerConfig
from data.errors import DataError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (PAD, BOS, EOS) + CHAT_TOKENS
# End-of-document tokens of well-known tokenizers, tried when a loaded tokenizer's config names none.
KNOWN_EOS = (EOS, "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")


@dataclass
class SpecialIds:
    eos: int
    bos: Optional[int]
    pad: Optional[int]


def train_bpe(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(limit_bytes(texts, config.train_max_bytes), trainer=trainer)
    return tokenizer


def limit_bytes(texts: Iterable[str], max_bytes: int) -> Iterable[str]:
    seen = 0
    for text in texts:
        if seen >= max_bytes:
            return
        seen += len(text)
        yield text


def load_tokenizer(path: str) -> Tokenizer:
    """Load a tokenizer.json, or the tokenizer.json inside a Hugging Face tokenizer folder."""
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise DataError(f"tokenizer.path={path}: no tokenizer.json there (a fast Hugging Face tokenizer is needed)")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:
        raise DataError(f"tokenizer.path={path}: cannot read {file.name}: {error}") from None


def token_name(value: object) -> Optional[str]:
    """tokenizer_config.json stores a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def special_ids(tokenizer: Tokenizer, hf_config: Dict[str, object], eos_override: Optional[str]) -> SpecialIds:
    def find(name: Optional[str]) -> Optional[int]:
        return tokenizer.token_to_id(name) if name else None

    eos_name = eos_override or token_name(hf_config.get("eos_token"))
    eos = find(eos_name) if eos_name else next((find(t) for t in KNOWN_EOS if find(t) is not None), None)
    if eos is None:
        raise DataError(
            f"the tokenizer has no end-of-document token{f' {eos_name!r}' if eos_name else ''}; "
            "set tokenizer.eos_token=<a token in its vocabulary>"
        )
    return SpecialIds(
        eos=eos,
        bos=find(token_name(hf_config.get("bos_token")) or BOS),
        pad=find(token_name(hf_config.get("pad_token")) or PAD),
    )


def hf_tokenizer_config(path: Optional[str]) -> Dict[str, object]:
    if path and Path(path).is_dir() and (Path(path) / "tokenizer_config.json").is_file():
        return json.loads((Path(path) / "tokenizer_config.json").read_text())
    return {}


def save_tokenizer(
    tokenizer: Tokenizer, ids: SpecialIds, hf_config: Dict[str, object], source_path: Optional[str], out: Path
) -> None:
    """Write tokenizer.json and tokenizer_config.json so `transformers.AutoTokenizer` loads the folder, with
    the chat template of data/chat.py when the tokenizer has its role tokens."""
    tokenizer.save(str(out / "tokenizer.json"))
    if source_path and Path(source_path).is_dir():
        for name in ("special_tokens_map.json", "generation_config.json"):
            if (Path(source_path) / name).is_file():
                shutil.copy(Path(source_path) / name, out / name)
    named = {"eos_token": ids.eos, "bos_token": ids.bos, "pad_token": ids.pad}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    config.update({key: tokenizer.id_to_token(i) for key, i in named.items() if i is not None})
    if all(tokenizer.token_to_id(t) is not None for t in CHAT_TOKENS):
        config["chat_template"] = CHAT_TEMPLATE  # data/chat.py; a loaded tokenizer's own template (below) wins
    config.update(hf_config)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
