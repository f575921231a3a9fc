"""Talk to a model with its chat template: `python -m train.talk model_dir=<model folder> [prompt="..."]`.

With `prompt=` it answers once and exits; without, it reads prompts from the terminal and keeps the
conversation (an empty line or end of input quits). The model folder is a stage's `model/` (it holds
tokenizer.json) or a Hugging Face folder with a tokenizer.json.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from common.errors import one_line_errors
from common.paths import CONFIGS_DIR
from data.chat.template import END_OF_TURN, encode_prompt
from train.config import ModelFolderArgs
from train.model import generate, load_model


@dataclass
class TalkConfig(ModelFolderArgs):
    model_dir: Optional[str] = "outputs/runs/dpo/model"
    prompt: Optional[str] = None  # answer this once; None: interactive
    system: Optional[str] = None  # an optional system message
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


class Talk:
    def __init__(self, folder: Path, config: TalkConfig):
        if not (folder / "tokenizer.json").is_file():
            raise SystemExit(f"error: {folder} has no tokenizer.json; point model_dir= at a stage's model/ folder")
        self.model = load_model(folder).eval()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.end = self.tokenizer.token_to_id(END_OF_TURN)
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.messages: List[Dict[str, str]] = [{"role": "system", "content": config.system}] if config.system else []
        self.ended_turn = False  # whether the last answer ended with <|end_of_turn|> (the chat format), not at max_new_tokens
        self.raw = ""  # the last answer as decoded, before stripping

    def answer(self, prompt: str) -> str:
        self.messages.append({"role": "user", "content": prompt})
        ids = encode_prompt(self.tokenizer, self.messages)
        output = generate(self.model, torch.tensor([ids]), self.config.max_new_tokens, self.config.temperature,
                          self.config.top_p, eos_token_id=self.end, generator=self.generator)[0, len(ids):].tolist()
        self.ended_turn = self.end in output
        if self.ended_turn:
            output = output[: output.index(self.end)]
        self.raw = self.tokenizer.decode(output)
        reply = self.raw.strip()
        self.messages.append({"role": "assistant", "content": reply})
        return reply

    def shown(self, reply: str) -> str:
        """The reply as printed: a model that answers only spaces and newlines shows them."""
        return reply or (f"(whitespace only: {self.raw!r})" if self.raw else "(nothing)")


ConfigStore.instance().store(name="talk_schema", node=TalkConfig)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="talk", version_base=None)
def main(cfg) -> None:
    config: TalkConfig = OmegaConf.to_object(cfg)
    with one_line_errors():
        chat = Talk(Path(config.model_dir), config)
    if config.prompt is not None:
        print(f"user: {config.prompt}")
        print(f"assistant: {chat.shown(chat.answer(config.prompt))}")
        if not chat.ended_turn:
            print(f"(no {END_OF_TURN} within max_new_tokens={config.max_new_tokens}: the turn did not end)")
        return
    print(f"talking to {config.model_dir}; an empty line quits")
    for line in sys.stdin:
        if not line.strip():
            break
        print(f"assistant: {chat.shown(chat.answer(line.strip()))}", flush=True)


if __name__ == "__main__":
    main()
