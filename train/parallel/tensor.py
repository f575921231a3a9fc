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
- MLA: the query projection (q_proj, or q_lora's q_b_proj) and the latent's up-projection kv_b_proj
  column-parallel by heads, o row-parallel; the down-projections to the latents and the shared rope key
  (q_a_proj, kv_a_proj_with_mqa) and their norms are replicated within TP and read the gathered sequence.
  Their gradients must be the sum over the tp ranks' heads: the latents' arrive summed already (the
  column-parallel layers all-reduce their input's gradient), the rope key's are only this rank's heads'
  (every head reads the one key), so a hook marks the rope key as a partial sum in backward
  (`sum_rope_key_gradient`: DTensor all-reduces it), as Megatron-LM's copy-to-TP-region operator does;
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

What is not supported yet is refused at start-up (`tensor_parallel_problems`): the linear mixers,
attention sinks, whole-projection QK-norm, absolute position embeddings, LongCat's shortcut MoE.
"""

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleInputOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

from train.model.config import ModelConfig
from train.model.ffn.glu import GLU
from train.model.ffn.mlp import MLP
from train.model.mixer.mla import MultiHeadLatentAttention
from train.model.mixer.softmax_attention import SoftmaxAttention
from train.model.moe.layer import MoE

TP_MIXERS = ("softmax_attention", "mla")
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
        if mixer.kind == "mla":
            if mixer.mla.num_heads % tp:
                problems.append(f"model.mixers.{name}.mla.num_heads={mixer.mla.num_heads} is not divisible by "
                                f"parallel.tp={tp}")
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
    elif isinstance(mixer, MultiHeadLatentAttention):
        # the input sequence gathered once, as a plain tensor: the replicated down-projections read it too
        plan["mixer"] = PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                           desired_input_layouts=(Replicate(), None, None, None), use_local_output=True)
        query = "q_proj" if mixer.q_lora_rank is None else "q_b_proj"
        plan.update({f"mixer.{p}": ColwiseParallel() for p in (query, "kv_b_proj")})
        plan["mixer.o_proj"] = RowwiseParallel(output_layouts=Shard(1))
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


def sum_rope_key_gradient(tp_mesh, rope_dim: int):
    """A forward hook for MLA's kv_a_proj_with_mqa (output [..., latent | rope key]): identity forward; in
    backward the rope key's gradient, from this rank's heads only, is declared a partial sum over the tp
    ranks, so DTensor all-reduces it (the latent's gradient arrives summed through kv_b_proj)."""

    def hook(module, args, out_BTX):
        latent_BTC, rope_BTR = out_BTX.split([out_BTX.shape[-1] - rope_dim, rope_dim], dim=-1)
        rope_BTR = DTensor.from_local(rope_BTR, tp_mesh, [Replicate()], run_check=False).to_local(
            grad_placements=[Partial()])
        return torch.cat([latent_BTC, rope_BTR], dim=-1)

    return hook


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Split `model` (a Transformer, plain, real or meta weights) over `tp_mesh` in place."""
    parallelize_module(model, tp_mesh, root_plan(model))
    tp = tp_mesh.size()
    for block in model.layers:
        parallelize_module(block, tp_mesh, block_plan(block))
        mixer = block.mixer  # the mixer views its projections with its local head counts
        if isinstance(mixer, SoftmaxAttention):
            mixer.num_heads //= tp
            mixer.num_kv_heads //= tp
        elif isinstance(mixer, MultiHeadLatentAttention):
            mixer.num_heads //= tp
            mixer.kv_a_proj_with_mqa.register_forward_hook(sum_rope_key_gradient(tp_mesh, mixer.rope_dim))
