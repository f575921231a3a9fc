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

SFT and DPO render conversations with the start model's tokenizer and chat format (data/chat/chat_format.py:
ours, or the tokenizer's own template, or `data.chat_template`). Special tokens a template adds grow the
model's vocabulary (new rows the mean of the old, train/model/resize.py); the tokenizer as trained with is
then the run folder's tokenizer/. Rank 0 tokenizes into the cache (`data.chat_cache`, by default the run
folder's tokenized/, which every rank and restart shares) while the other ranks wait for it.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from common.atomic import atomic_directory
from data.chat.chat_format import ChatFormat, TemplateFormat, chat_format
from data.chat.preferences import load_pairs
from data.chat.sft import load_sft
from data.chat.workers import default_workers
from data.reader import PreparedData, TokenWindows
from train import run_folder
from train.config import TrainConfig
from train.data_loader import Indexed, SFTSamples, StageData, Windows, collate_preferences, collate_sft, collate_windows
from train.dpo_loss import LOSS_TYPES, REFERENCE_FREE
from train.model import load_model
from train.model.load import model_config
from train.model.config import apply_overrides
from train.model.folder import model_from_state_dict
from train.model.resize import grow_vocab
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
    if stage.reads == "pairs" and config.data.pack and not config.data.document_masking:
        raise ValueError("stage=dpo with data.pack=true and data.document_masking=false: a packed sequence would see "
                         "the others in its row and change its log-prob; set data.document_masking=true or data.pack=false")
    if config.init.weights:
        # model.yaml, or a Hugging Face config.json through its adapter: nothing is built or read
        config.model = apply_overrides(model_config(config.init.weights), dict(config.init.overrides))
    if stage.reads == "shards":
        data = PreparedData(config.data.path)
        if data.vocab_size > config.model.vocab_size:
            raise ValueError(f"the tokenizer of {config.data.path} has {data.vocab_size} tokens but model.vocab_size="
                             f"{config.model.vocab_size}; set model.vocab_size={data.vocab_size} or more")
    else:  # the tokens a chat template added grow the start model's vocabulary (initial_model)
        config.model.vocab_size = max(config.model.vocab_size, chat_format_of(config).vocab_size)
    return stage


def tokenizer_source(config: TrainConfig) -> Path:
    """Where the run's tokenizer is read from: the start model's folder if it has one, else the prepared data's."""
    folder = Path(config.init.weights or config.data.path)
    return folder if (folder / "tokenizer.json").is_file() else Path(config.data.path)


def tokenizer_folder(config) -> Path:
    """Where the run's tokenizer is (what the final model folder and export copy): the run folder's tokenizer/
    when a chat stage saved one there (a template, added tokens), else its source. `config` may also be a
    run's config.yaml as read by OmegaConf."""
    saved = Path(config.out_dir) / config.run_name / run_folder.TOKENIZER
    return saved if (saved / "tokenizer.json").is_file() else tokenizer_source(config)


def chat_format_of(config: TrainConfig) -> ChatFormat:
    return chat_format(str(tokenizer_source(config)), config.data.chat_template)


def grows_vocab(config: TrainConfig) -> bool:
    """Whether the model has more tokens than its init.weights (added by a chat template)."""
    return bool(config.init.weights) and config.model.vocab_size > model_config(config.init.weights).vocab_size


def save_run_tokenizer(chat: ChatFormat, folder: Path) -> None:
    """The tokenizer as trained with into the run folder, when it differs from its source's files (else an
    earlier start's, under another template, is removed)."""
    if isinstance(chat, TemplateFormat) or chat.added:
        with atomic_directory(folder) as tmp:
            chat.save(tmp)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def cache_report(cache: Path, reused: bool) -> str:
    return f"reused {cache}" if reused else f"tokenized into {cache}"


def stage_data(stage: Stage, config: TrainConfig, rank: int = 0, ranks: int = 1) -> StageData:
    """The stage's training and held-out samples, as process `rank` of `ranks` sees them. Prepared shards are
    checked against their manifest's checksums first (each process checks its share), so a corrupted file
    stops the run with its name before any step reads it. For SFT and DPO rank 0 tokenizes into the cache
    and saves the run's tokenizer; the others wait for the cache."""
    builder = rank == 0
    data = config.data
    if stage.reads == "shards":
        PreparedData(data.path).verify(rank, ranks)
        train = Windows(TokenWindows(data.path, "train", data.seq_len, seed=data.seed, shuffle=True))
        val = Windows(TokenWindows(data.path, data.val_split, data.seq_len, shuffle=False))
        return StageData(train, [val[i] for i in range(len(val))], collate_windows,
                         f"{len(train):,} windows of {data.seq_len} tokens from {data.path}")
    chat = chat_format_of(config)
    if builder:
        save_run_tokenizer(chat, config.run_dir / run_folder.TOKENIZER)
    cached = {"cache": Path(data.chat_cache or config.run_dir / run_folder.TOKENIZED), "builder": builder,
              "workers": data.chat_workers if data.chat_workers >= 0 else default_workers(),
              "wait_s": config.parallel.init_timeout_s}
    if stage.reads == "conversations":
        sft = load_sft(data.chat, chat, data.seq_len, chat.pad_id, data.pack, data.chat_val_fraction, **cached)
        report = (f"{sft.conversations:,} conversations in {len(sft.train):,} windows (+{len(sft.val)} held out), "
                  f"{cache_report(sft.cache, sft.reused)}")
        train, val, skipped = SFTSamples(sft.train), SFTSamples(sft.val), sft.skipped
        # pipeline stages exchange fixed shapes: every batch padded to seq_len under pp
        parallel = config.parallel
        collate = collate_sft(data.seq_len if parallel.pp > 1 else data.pad_to_multiple_of, data.pack,
                              parallel.tp == parallel.cp == parallel.pp == 1)
    else:
        pairs = load_pairs(data.chat, chat, data.seq_len, data.chat_val_fraction, **cached)
        report = f"{len(pairs.train):,} preference pairs (+{len(pairs.val)} held out), {cache_report(pairs.cache, pairs.reused)}"
        train, val, skipped = pairs.train, pairs.val, pairs.skipped
        collate = collate_preferences(chat.pad_id, data.pad_to_multiple_of, data.seq_len, data.pack)
    if chat.added:
        report += f"; added {', '.join(chat.added)} to the tokenizer (vocabulary {config.model.vocab_size:,})"
    if skipped.counts:  # the counts by reason; "(kept)" ones (e.g. truncated) were used, not dropped
        report += f"; skipped {skipped.dropped()}: {skipped.report()}"
    return StageData(Indexed(train, data.seed), [(val[i], i) for i in range(len(val))], collate, report)


def initial_model(config: TrainConfig) -> Transformer:
    """The whole model with its initial weights, on CPU: init.weights' (under the resolved config, e.g.
    with YaRN switched on, its vocabulary grown for added tokens), or a seeded random init."""
    if config.init.weights:
        state = grow_vocab(load_model(config.init.weights).state_dict(), config.model.vocab_size)
        return model_from_state_dict(config.model, state)
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
