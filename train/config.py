"""Typed configuration of the training stages (`python -m train stage=pretrain ...`).

Dataclasses registered in Hydra's ConfigStore, so a misspelled override is an error. The primary
config is configs/train.yaml; `model=` picks a preset from configs/model/, `stage=` a stage preset
from configs/stage/. Every run writes to `out_dir/run_name` (never a timestamp), which all ranks and
restarts share: config.yaml, metrics.jsonl, checkpoints/, wandb/.
"""

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from common.compose import compose
from data.chat.rows import ChatSource
from train.model.config import ModelConfig


@dataclass
class DataConfig:
    path: str = "outputs/data/stdlib"  # a folder written by `python -m data`
    seq_len: int = 256  # tokens per training window (SFT, DPO: the longest conversation or pair)
    document_masking: bool = True  # attend only within a document of a packed window
    seed: int = 0  # order of the windows (a seeded permutation per epoch)
    num_workers: int = 0  # DataLoader worker processes per rank
    val_split: str = "val"  # the prepared split validation reads
    # SFT and DPO read conversations / preference pairs instead of shards (the tokenizer is the model's):
    chat: ChatSource = field(default_factory=ChatSource)
    # SFT and DPO: pack sequences into windows of seq_len with document masking (SFT: the conversations,
    # when tokenized; DPO: each batch's chosen and rejected sequences, the pairs unchanged), else one per row
    pack: bool = True
    chat_val_fraction: float = 0.05  # conversations / pairs held out, spread evenly
    # How conversations are rendered: auto (the tokenizer's own chat template; ours for a tokenizer of
    # `python -m data`) | own | chatml | a .jinja file; special tokens it writes that the tokenizer lacks are added
    chat_template: str = "auto"
    chat_cache: Optional[str] = None  # folder of tokenized SFT/DPO caches (reused by fingerprint); None: run folder's tokenized/
    chat_workers: int = -1  # processes tokenizing a large SFT/DPO set; -1: one per core (at most 16)
    # SFT and DPO: a batch is as long as its longest row, rounded up to a multiple of this (at most seq_len):
    # few distinct shapes keep memory flat (kernels cache per shape; docs/notes.md, "Padding DPO batches")
    pad_to_multiple_of: int = 16


@dataclass
class OptimConfig:
    lr: float = 3e-3  # the peak learning rate, reached after warmup_steps
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's epsilon
    weight_decay: float = 0.1  # on matrices only; norms, biases, embeddings and sinks get none
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    warmup_steps: int = 20  # linear warmup from 0 to lr
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly to min_lr
    implementation: str = "auto"  # auto (fused where supported, else foreach) | fused | foreach | loop
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping


@dataclass
class DPOConfig:
    beta: float = 0.1  # DPO/IPO/SimPO: the reward scale (SimPO's paper uses 2-2.5); ORPO: lambda, the odds-ratio weight
    # sigmoid (DPO; cDPO with label_smoothing > 0) | ipo | simpo | orpo (the last two reference-free: no
    # reference model; train/dpo_loss.py has the formulas)
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0  # sigmoid, simpo: the probability of a flipped label
    simpo_gamma: float = 0.5  # simpo: the target reward margin
    # Compute the reference's log-probs of every pair once before training (kept in the run folder and
    # reused on resume), so no reference model is kept during training
    precompute_reference: bool = False


@dataclass
class TrainerConfig:
    max_steps: int = 200  # optimizer steps of the run (a resumed run continues up to it)
    global_batch_size: int = 16  # sequences per optimizer step, over all ranks; must divide over the dp ranks
    micro_batch_size: int = 8  # the most sequences a rank runs per forward (the largest divisor of its share <= this)
    seed: int = 0  # weight initialisation
    # cross-entropy chunk (tokens): the full [tokens, vocab] logits never exist at once; 512 trained the benchmark
    # Llama 1-7% faster than 2048 or 4096 on a 2-core CPU (bench/pretrain_throughput.py, README)
    loss_chunk_tokens: int = 512
    val_every: int = 50  # steps between validations; 0: only at the end
    val_samples: int = 32  # held-out windows for the validation loss (the same ones at any number of ranks)
    log_every: int = 10  # steps between console lines and metrics records (the only steps that wait for the device)
    nonfinite: str = "skip"  # skip (drop the step, stop after max_skipped in a row) | stop
    max_skipped: int = 5  # non-finite steps in a row before the run stops
    deterministic: bool = False  # torch.use_deterministic_algorithms, for bit-exact restarts
    record_samples: bool = False  # write each rank's consumed sample indices to samples/rank_N.jsonl


@dataclass
class ParallelConfig:
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    dp_replicate: int = 1  # HSDP: replicas, each sharded over dp_shard ranks
    dp_shard: int = -1  # -1: world_size / dp_replicate
    ep: int = 1  # expert parallelism: ranks an MoE layer's experts are spread over, carved from the dp x cp ranks
    tp: int = 1  # tensor + sequence parallelism: ranks each layer's heads, hidden units and vocabulary are split over
    cp: int = 1  # context parallelism: ranks each sequence is split over (zig-zag chunks; attention gathers keys)
    pp: int = 1  # pipeline parallelism: ranks the layers are split over, in stages (train/parallel/pipeline.py)
    # GPipe | 1F1B | Interleaved1F1B | LoopedBFS | InterleavedZeroBubble | ZBVZeroBubble | DualPipeV
    pp_schedule: str = "1F1B"
    pp_stages_per_rank: int = 0  # virtual stages on each pp rank; 0: 1 for GPipe and 1F1B, else 2
    pp_layers: List[int] = field(default_factory=list)  # layers of each stage, e.g. [3, 5]; []: an even split
    param_dtype: str = "bf16"  # compute dtype (FSDP2 casts the gathered parameters; one process: torch.autocast): bf16 | fp32
    reduce_dtype: str = "fp32"  # gradient reduction dtype (FSDP2; one process reduces nothing)
    activation_checkpointing: str = "none"  # none | selective (every other block) | full
    compile: bool = False  # torch.compile each block
    # False: keep each block's gathered (compute-dtype) weights from forward to backward (ZeRO-2-like): no
    # second all-gather and cast in backward, for the memory of one unsharded copy of the blocks
    reshard_after_forward: bool = True
    tf32: bool = True  # CUDA: fp32 matmuls on TF32 tensor cores (torch.set_float32_matmul_precision("high"))
    # CPU ops: floats below 1.2e-38 (denormals) read and written as zero (x86 FTZ/DAZ); the decay masks of the
    # linear mixers underflow into them, and a CPU computes on denormals 4-170x slower (train/parallel/world.py)
    flush_denormal: bool = True
    # Seconds the rendezvous and process-group start (init_process_group, NCCL's eager init) may take:
    # generous, since the nodes of a large job start minutes apart.
    init_timeout_s: float = 1800.0
    # Seconds a collective may wait during training before the run fails (NCCL's default is 600): set on
    # every process group once they exist; raise it for very slow checkpoint storage.
    timeout_s: float = 600.0


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between saves (and always at the end); 0: only at the end
    keep: int = 2  # complete checkpoints kept
    mode: str = "async"  # sync | async (thread) | async_process (a saver process)
    resume: bool = True  # resume from the latest complete checkpoint in the run folder
    init_from: Optional[str] = None  # deprecated spelling of init.weights
    init_overrides: Dict[str, Any] = field(default_factory=dict)  # deprecated spelling of init.overrides


@dataclass
class InitConfig:
    """Where the initial weights come from (a stage after pre-training starts from the previous stage's model)."""

    weights: Optional[str] = None  # a model folder: a stage's model/ (model.yaml + model.safetensors) or Hugging Face
    # With weights, the model's config is the folder's; these dotted keys then change it, e.g. YaRN for
    # mid-training: {position.kind: yarn, position.yarn.factor: 4, position.yarn.original_context: 256}
    overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "llm-blocks"  # the W&B project
    entity: Optional[str] = None  # the W&B team or user; None: your default
    group: Optional[str] = None  # runs that belong together, e.g. one pipeline's stages
    tags: List[str] = field(default_factory=list)  # W&B tags of the run


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    peak_tflops: Optional[float] = None  # per device, for MFU; None: known GPUs by name, measured on CPU
    progress: str = "auto"  # auto (a progress bar on a terminal, else timed lines) | bar | lines


@dataclass
class DownstreamConfig:
    """Multiple-choice accuracy during training (train/downstream.py): downstream/acc and downstream/acc_norm."""

    path: Optional[str] = None  # a JSONL file of {"query", "choices", "answer"} rows; None: off
    every: int = 0  # steps between scorings (and always at the last step); 0: only at the last
    batch_size: int = 16  # (context, choice) pairs per forward on each rank


@dataclass
class TrainConfig:
    stage: str = "pretrain"  # pretrain | midtrain | sft | dpo
    run_name: str = "pretrain"  # the run folder's name: out_dir/run_name, shared by every rank and restart
    out_dir: str = "outputs/runs"  # where run folders go
    model: ModelConfig = field(default_factory=ModelConfig)  # model=<preset> (configs/model/), or init.weights' config
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    init: InitConfig = field(default_factory=InitConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def __post_init__(self) -> None:
        """The spellings of the last release keep working for one more, with a message."""
        old = self.checkpoint
        if old.init_from is not None or old.init_overrides:
            warnings.warn("checkpoint.init_from and checkpoint.init_overrides are now init.weights and init.overrides; "
                          "the old keys will be removed in the next release", FutureWarning, stacklevel=2)
            self.init.weights = self.init.weights or old.init_from
            self.init.overrides = {**old.init_overrides, **self.init.overrides}
            old.init_from, old.init_overrides = None, {}

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@dataclass
class ModelFolderArgs:
    """The `model_dir=` argument of the commands that read a model folder (talk, passkey, export, evaluate)."""

    model_dir: Optional[str] = None  # a model folder: a stage's model/ or a Hugging Face folder
    checkpoint: Optional[str] = None  # deprecated spelling of model_dir

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            warnings.warn("checkpoint= is now model_dir=; the old key will be removed in the next release",
                          FutureWarning, stacklevel=2)
            self.model_dir, self.checkpoint = self.checkpoint, None


def compose_train_config(overrides: List[str]) -> TrainConfig:
    """The TrainConfig that `python -m train <overrides>` would run with, composed without running it:
    what launchers use to check overrides before submitting (a typo fails here, not in a queued job)."""
    return OmegaConf.to_object(compose("train", overrides))
