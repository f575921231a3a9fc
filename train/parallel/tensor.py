"""Tensor parallelism with sequence parallelism (Megatron-LM, Shoeybi et al. 2019, arXiv 1909.08053;
Korthikanti et al. 2022, arXiv 2205.05198), applied to a plain model from outside with DTensor's
`parallelize_module` plans keyed by module names, as torchtitan's llama3 `parallelize.py` does.

Between sublayers the residual stream is sequence-parallel: each of the `tp` ranks holds [B, T/tp, D]
(plain local tensors), and the norms run on their own tokens (`SequenceParallel`: the norm weights are
replicated DTensors, whose gradients are summed over the tp ranks). Each sublayer gathers its input
sequence (all-gather), runs column-parallel input projections and a row-parallel output projection
whose partial sums are reduce-scattered back onto the sequence:
- softmax attention: q/k/v column-parallel by heads (each rank runs H/tp query heads, G/tp key/value
  heads; the mixer's head counts are set to the local ones), o row-parallel; per-head QK-norms run on the
  rank's heads (SequenceParallel over the head dimension);
- GLU and MLP feed-forwards: gate/up column-parallel, down row-parallel over the hidden units;
- MoE layers: replicated within TP (every tp rank routes the whole gathered sequence through all
  experts; the output is cut back to the rank's tokens). Experts sharded by TP are not implemented;
- the token embedding is vocabulary-parallel (each rank looks up its V/tp rows; the partial sums are
  reduce-scattered onto the sequence), and so is the output head: the loss (train/loss.py) computes
  the log-sum-exp over the vocabulary shards explicitly inside the chunked fused cross-entropy, so the
  full [tokens, V] logits never exist on any rank;
- the final norm is replicated within TP: it gathers the sequence (the loss reads every token on every
  tp rank) and its weight's gradient is the same on each.
Every parameter is either a DTensor on the tp mesh or computed identically on every tp rank; FSDP2 then
shards them over the data-parallel mesh (a 2-D (dp, tp) mesh for the tensor-parallel ones).

What is not supported yet is refused at start-up (`tensor_parallel_problems`): MLA and the linear mixers,
attention sinks, whole-projection QK-norm, absolute position embeddings, LongCat's shortcut MoE.
"""

from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleInputOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

from train.model.config import ModelConfig
from train.model.ffn.glu import GLU
from train.model.ffn.mlp import MLP
from train.model.mixer.softmax_attention import SoftmaxAttention
from train.model.moe.layer import MoE

TP_MIXERS = ("softmax_attention",)
TP_FFNS = ("glu", "mlp", "moe", "none")


def tensor_parallel_problems(model: ModelConfig, tp: int) -> list[str]:
    """Why `model` cannot be split over `tp` ranks (one line each, naming the key and the numbers); [] if it can."""
    problems = []
    if model.vocab_size % tp:
        problems.append(f"model.vocab_size={model.vocab_size} is not divisible by parallel.tp={tp} (the embedding and "
                        "output head are split by vocabulary)")
    if model.position.kind in ("learned", "sinusoidal"):
        problems.append(f"model.position.kind={model.position.kind} (absolute positions) is not supported with "
                        f"parallel.tp={tp}; use rotary positions or tp=1")
    if model.shortcut_moe is not None:
        problems.append(f"model.shortcut_moe is not supported with parallel.tp={tp}")
    for name in sorted(set(model.layer_mixers)):
        mixer = model.mixers[name]
        if mixer.kind not in TP_MIXERS:
            problems.append(f"model.mixers.{name}: kind {mixer.kind} is not supported with parallel.tp={tp} "
                            f"(supported: {', '.join(TP_MIXERS)})")
            continue
        attn = mixer.attention
        for key, heads in (("num_heads", attn.num_heads), ("num_kv_heads", attn.num_kv_heads or attn.num_heads)):
            if heads % tp:
                problems.append(f"model.mixers.{name}.attention.{key}={heads} is not divisible by parallel.tp={tp}")
        if attn.sinks:
            problems.append(f"model.mixers.{name}.attention.sinks is not supported with parallel.tp={tp}")
        if attn.qk_norm and attn.qk_norm_over == "all":
            problems.append(f"model.mixers.{name}.attention.qk_norm_over=all (a norm over all heads) is not "
                            f"supported with parallel.tp={tp}; use qk_norm_over=head")
    for name in sorted(set(model.layer_ffns)):
        ffn = model.ffns[name]
        if ffn.kind not in TP_FFNS:
            problems.append(f"model.ffns.{name}: kind {ffn.kind} is not supported with parallel.tp={tp}")
        elif ffn.kind in ("glu", "mlp") and ffn.hidden_dim % tp:
            problems.append(f"model.ffns.{name}.hidden_dim={ffn.hidden_dim} is not divisible by parallel.tp={tp}")
    return problems


def block_plan(block: nn.Module) -> dict:
    """The parallel styles of one Block's modules, by name (the residual stream stays [B, T/tp, D], local)."""
    plan = {name: SequenceParallel(use_local_output=True)
            for name in ("mixer_norm", "mixer_post_norm", "ffn_norm", "ffn_post_norm") if getattr(block, name) is not None}
    mixer = block.mixer
    if isinstance(mixer, SoftmaxAttention):
        # the input sequence gathered once (a Replicate DTensor, fed to q, k and v); positions, documents, cache pass
        plan["mixer"] = PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                           desired_input_layouts=(Replicate(), None, None, None))
        plan.update({f"mixer.{p}": ColwiseParallel() for p in ("q_proj", "k_proj", "v_proj")})
        plan["mixer.o_proj"] = RowwiseParallel(output_layouts=Shard(1))
        if mixer.q_norm is not None:  # over head_dim, on this rank's heads: its weight's gradient summed over tp
            plan["mixer.q_norm"] = plan["mixer.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    ffn = block.ffn
    if isinstance(ffn, (GLU, MLP)):
        plan["ffn"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        plan.update({f"ffn.{p}": ColwiseParallel() for p in ("gate_proj", "up_proj") if hasattr(ffn, p)})
        plan["ffn.down_proj"] = RowwiseParallel(output_layouts=Shard(1))
    elif isinstance(ffn, MoE):  # replicated within TP: the whole gathered sequence, every expert, on each tp rank
        plan["ffn"] = PrepareModuleInputOutput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                               use_local_input=True, output_layouts=(Replicate(),),
                                               desired_output_layouts=(Shard(1),), use_local_output=True)
    return plan


def root_plan(model: nn.Module) -> dict:
    """The parallel styles of the Transformer's own modules (embedding, final norm, output head)."""
    plan = {
        # vocabulary-parallel lookup; the partial sums reduce-scattered onto the sequence: [B, T/tp, D]
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        # the loss reads every token on every tp rank, with the head's vocabulary shard (train/loss.py)
        "final_norm": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                         use_local_output=True),
    }
    if model.output is not None:  # only its weight is read (by the loss): [V/tp, D] rows, like the embedding's
        plan["output"] = ColwiseParallel(output_layouts=Replicate())
    return plan


def sharded_modules(model: nn.Module) -> set[str]:
    """Names of the modules whose parameters tensor parallelism splits (the others are replicated within TP)."""
    styles = {**root_plan(model), **{f"layers.{i}.{name}": style for i, block in enumerate(model.layers)
                                     for name, style in block_plan(block).items()}}
    return {name for name, style in styles.items() if isinstance(style, (ColwiseParallel, RowwiseParallel))}


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Split `model` (a Transformer, plain, real or meta weights) over `tp_mesh` in place."""
    parallelize_module(model, tp_mesh, root_plan(model))
    tp = tp_mesh.size()
    for block in model.layers:
        parallelize_module(block, tp_mesh, block_plan(block))
        if isinstance(block.mixer, SoftmaxAttention):  # the mixer views its projections with its local head counts
            block.mixer.num_heads //= tp
            block.mixer.num_kv_heads //= tp
