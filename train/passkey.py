"""Passkey retrieval (Mohtashami & Jaggi 2023, arXiv 2305.16300): a 5-digit number hidden at some depth
in long filler text; the model must repeat it. Scored by greedy generation, at multiples of the
original context, before and after a context extension such as YaRN mid-training.

    python -m train.passkey model_dir=outputs/runs/midtrain/model context=256 multiples=[1,2,4]
"""

import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from common.errors import one_line_errors
from common.paths import CONFIGS_DIR
from data.passkey import FILLER, INTRO, NEEDLE, QUESTION, passkey_text
from train.config import ModelFolderArgs
from train.model import generate, load_model


@dataclass
class PasskeyConfig(ModelFolderArgs):
    model_dir: Optional[str] = "outputs/runs/midtrain/model"  # a model folder with tokenizer.json
    context: int = 256  # the original (pre-extension) context length
    multiples: List[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])  # prompt lengths, times the context
    depths: List[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])  # where the key sits: 0 first, 1 last
    trials: int = 3  # keys per (length, depth)
    seed: int = 0  # the probe's keys


def passkey_prompt(tokenizer: Tokenizer, length: int, depth: float, key: int) -> List[int]:
    """Token ids of about `length` tokens with the needle at fraction `depth` of the filler (the text of a
    `source.kind=passkey` document without its answer, tokenized whole as training tokenized those)."""
    size = lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    fixed = size(INTRO) + size(NEEDLE.format(key=key)) + size(QUESTION)
    repeats = max(1, (length - fixed) // size(FILLER))
    before = round(repeats * depth)
    return tokenizer.encode(passkey_text(before, repeats - before, key, answer=False), add_special_tokens=False).ids


@torch.no_grad()
def passkey_accuracy(model, tokenizer: Tokenizer, config: PasskeyConfig) -> Dict[str, float]:
    """Accuracy per context multiple, e.g. {"1x": 1.0, "2x": 0.33, "4x": 0.0}."""
    model.eval()
    rng = random.Random(config.seed)
    results = {}
    for multiple in config.multiples:
        correct = total = 0
        for depth in config.depths:
            for _ in range(config.trials):
                key = rng.randint(10000, 99999)
                prompt = passkey_prompt(tokenizer, int(config.context * multiple), depth, key)
                output = generate(model, torch.tensor([prompt]), max_new_tokens=8)[0, len(prompt):]
                answer = re.search(r"\d+", tokenizer.decode(output.tolist()))
                correct += int(answer is not None and answer.group() == str(key))
                total += 1
        results[f"{multiple:g}x"] = correct / total
    return results


ConfigStore.instance().store(name="passkey_schema", node=PasskeyConfig)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="passkey", version_base=None)
def main(cfg) -> None:
    config: PasskeyConfig = OmegaConf.to_object(cfg)
    folder = Path(config.model_dir)
    if not (folder / "tokenizer.json").is_file():
        sys.exit(f"error: {folder} has no tokenizer.json; point model_dir= at a stage's model/ folder")
    with one_line_errors():
        scores = passkey_accuracy(load_model(folder), Tokenizer.from_file(str(folder / "tokenizer.json")), config)
    print(f"passkey accuracy ({folder}, original context {config.context}): "
          + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
