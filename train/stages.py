"""The four training stages and what each needs and builds: the one place that knows the stage rules.

    stage      reads                                starts from               objective
    pretrain   token windows of prepared shards     random init (or weights)  next-token cross-entropy
    midtrain   token windows (long documents)       random init (or weights)  next-token cross-entropy
    sft        conversations, packed or padded      init.weights (required)   cross-entropy on assistant tokens
    dpo        preference pairs                     init.weights (required)   DPO against a frozen reference
                                                                              (or SimPO, ORPO: reference-free)

With `init.weights` the model's config is the folder's (the `model=` preset is not used), changed by
`init.overrides` (e.g. YaRN for mid-training); the resolved config is what config.yaml records. The
tokenizer travels with the model: the prepared data's for pre-training, the start model's after.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tokenizers import Tokenizer

from data.chat.preferences import load_pairs
from data.chat.sft import load_sft
from data.reader import PreparedData, TokenWindows
from train.config import TrainConfig
from train.data_loader import Indexed, StageData, Windows, collate_preferences, collate_sft, collate_windows, sft_items
from train.dpo_loss import LOSS_TYPES, REFERENCE_FREE
from train.model import load_model
from train.model.load import model_config
from train.model.config import apply_overrides
from train.model.folder import model_from_state_dict
from train.model.transformer import Transformer
from train.objectives import DirectPreference, NextToken


@dataclass(frozen=True)
class Stage:
    name: str
    reads: str  # shards | conversations | pairs
    needs_weights: bool  # starts from a model folder (init.weights)
    reference: bool  # trains against a frozen copy of the starting model (unless its loss is reference-free)


STAGES = {stage.name: stage for stage in (
    Stage("pretrain", "shards", needs_weights=False, reference=False),
    Stage("midtrain", "shards", needs_weights=False, reference=False),
    Stage("sft", "conversations", needs_weights=True, reference=False),
    Stage("dpo", "pairs", needs_weights=True, reference=True),
)}


def stage_of(config: TrainConfig) -> Stage:
    """The stage, its configuration resolved (the model config of init.weights) and checked."""
    if config.stage not in STAGES:
        raise ValueError(f"stage={config.stage!r} is unknown; use one of {', '.join(STAGES)}")
    stage = STAGES[config.stage]
    if stage.needs_weights and not config.init.weights:
        raise ValueError(f"stage={stage.name} starts from a model: set init.weights=<a model folder>")
    if stage.reads == "pairs" and config.dpo.loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo.loss_type={config.dpo.loss_type!r} is unknown; use one of {', '.join(LOSS_TYPES)}")
    if config.init.weights:
        # model.yaml, or a Hugging Face config.json through its adapter: nothing is built or read
        config.model = apply_overrides(model_config(config.init.weights), dict(config.init.overrides))
    if stage.reads == "shards":
        data = PreparedData(config.data.path)
        if data.vocab_size > config.model.vocab_size:
            raise ValueError(f"the tokenizer of {config.data.path} has {data.vocab_size} tokens but model.vocab_size="
                             f"{config.model.vocab_size}; set model.vocab_size={data.vocab_size} or more")
    return stage


def tokenizer_folder(config: TrainConfig) -> Path:
    """Where the run's tokenizer comes from: the start model's folder if it has one, else the prepared data's."""
    folder = Path(config.init.weights or config.data.path)
    return folder if (folder / "tokenizer.json").is_file() else Path(config.data.path)


def stage_data(stage: Stage, config: TrainConfig) -> StageData:
    data = config.data
    if stage.reads == "shards":
        train = Windows(TokenWindows(data.path, "train", data.seq_len, seed=data.seed, shuffle=True))
        val = Windows(TokenWindows(data.path, data.val_split, data.seq_len, shuffle=False))
        return StageData(train, [val[i] for i in range(len(val))], collate_windows,
                         f"{len(train):,} windows of {data.seq_len} tokens from {data.path}")
    tokenizer = Tokenizer.from_file(str(tokenizer_folder(config) / "tokenizer.json"))
    pad_id = tokenizer.token_to_id("<|pad|>") or 0
    if stage.reads == "conversations":
        sft = load_sft(data.chat, tokenizer, data.seq_len, pad_id, data.pack, data.chat_val_fraction)
        report = f"{sft.conversations:,} conversations in {len(sft.train):,} windows (+{len(sft.val)} held out)"
        train, val, skipped = sft_items(sft.train), sft_items(sft.val), sft.skipped
        collate = collate_sft(data.pad_to_multiple_of, data.pack)
    else:
        train, val, skipped = load_pairs(data.chat, tokenizer, data.seq_len, data.chat_val_fraction)
        report = f"{len(train):,} preference pairs (+{len(val)} held out)"
        collate = collate_preferences(pad_id, data.pad_to_multiple_of, data.seq_len)
    if skipped.counts:  # the counts by reason; "(kept)" ones (e.g. truncated) were used, not dropped
        report += f"; skipped {skipped.dropped()}: {skipped.report()}"
    return StageData(Indexed(train, data.seed), [(item, i) for i, item in enumerate(val)], collate, report)


def initial_model(config: TrainConfig) -> Transformer:
    """The whole model with its initial weights, on CPU: init.weights' (under the resolved config, e.g.
    with YaRN switched on), or a seeded random init."""
    if config.init.weights:
        return model_from_state_dict(config.model, load_model(config.init.weights).state_dict())
    torch.manual_seed(config.trainer.seed)
    return Transformer(config.model)


def reference(stage: Stage, config: TrainConfig) -> Optional[str]:
    """How the frozen reference takes part: None (none: the stage has none, or its loss is reference-free),
    "live" (a second model runs beside the policy on every batch) or "precomputed" (its log-probs of every
    pair, computed once before training: train/reference.py)."""
    if not stage.reference or config.dpo.loss_type in REFERENCE_FREE:
        return None
    return "precomputed" if config.dpo.precompute_reference else "live"


def objective(stage: Stage, config: TrainConfig, reference: Optional[torch.nn.Module]):
    """What the stage optimises (train/objectives.py); DPO's takes the live reference model, if it has one."""
    if stage.reads == "pairs":
        return DirectPreference(config.dpo, reference, config.trainer.loss_chunk_tokens)
    return NextToken(config.trainer.loss_chunk_tokens)
