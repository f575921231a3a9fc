"""Pipeline parallelism: the layers split into stages over the `pp` ranks, micro-batches flowing through them
under a schedule of torch.distributed.pipelining: GPipe (Huang et al. 2019, arXiv 1811.06965), 1F1B
(PipeDream-Flush, Narayanan et al. 2021, arXiv 2006.09503), interleaved 1F1B and looped BFS (several
virtual stages per rank; Narayanan et al. 2021, arXiv 2104.04473; Lamy-Poirier 2023, arXiv 2211.05953),
zero bubble (backward split into input and weight gradients; Qi et al. 2024, arXiv 2401.10241: interleaved
and ZB-V) and DualPipeV (DeepSeek-V3, arXiv 2412.19437, in its V-shaped form).

The split: `parallel.pp` ranks hold `stages_per_rank` stages each, pp x stages_per_rank in all, in layer
order: the embedding with the first, the final norm, the head and the loss with the last. Rank r holds
stage r (GPipe, 1F1B), stages r, r + pp, ... (the looped schedules) or stages r and 2pp - 1 - r (the V
schedules: the first and last stage on rank 0). `parallel.pp_layers` gives each stage's number of layers
(e.g. fewer where the embedding or the head sits); by default they split evenly.

Applied from outside the model (train/parallel/fsdp.py's `parallelize` calls `staged_model`):
- each stage is a copy of the whole model without the modules it does not hold, as torchtitan's
  pipeline_module_split does; its layers keep their indices (`KeptLayers`), so every parameter keeps its
  name in the whole model and a checkpoint saved under one layout loads under any other (DCP reshards).
  `Transformer.hidden_states` runs a stage's share: the previous stage's output replaces the embedding,
  and a stage without the final norm returns its last layer's output;
- a stage's layers are parallelised as without pipelining (tensor and context parallelism, activation
  checkpointing, compile, FSDP per block), and the stage (`StageModule`) is the FSDP root over its
  data-parallel ranks: the schedules keep its gradients unreduced until a step's last micro-batch;
- `StagedModel` shows a rank's stages as one model to the optimizer, the checkpoint, the gradient norm
  (train/parallel/grad_norm.py adds up the stages' squares) and the MoE router-bias update: its expert
  loads cover every MoE layer of the whole model (zeros for other stages' layers), so the loads summed
  over all ranks are every layer's, on every rank.

A step (`Pipeline.step`): every pp rank reads the same micro-batches (the step's `accumulation`,
train/batch_plan.py: trainer.micro_batch_size decides how many); the schedule takes them concatenated and
splits them again (under context parallelism, each rank's zig-zag chunks of them). The token ids (for
positions) and document ids go to every stage; hidden states [micro_batch, T / cp / tp, D] pass from stage
to stage, in fixed shapes (the schedule is built at the first step from its micro-batch: data.seq_len
windows; SFT pads its batches to data.seq_len under pp). The last
stage computes the summed next-token loss and returns it scaled as the trainer scales a micro-batch's. MoE
auxiliary losses stay where their layers run: each stage ties them to its output (`AuxLossGradient`, as
Megatron-LM's MoEAuxLossAutoScaler), so backward gives them the weight 1 / micro-batches, as if they had
been added to the loss. Validation (`Pipeline.evaluate`) runs the stages forward one batch at a time by
hand: a schedule's eval takes only whole steps of equal micro-batches, and the V schedules' fails (torch 2.13).

Refused at start-up (`pipeline_problems`): tied embeddings (the table would live on the first and the last
stage), MTP and the residual-stream variants (more than one tensor between layers), DPO, expert
parallelism with pp (its groups span the world: not done, train/parallel/dims.py), the zero-bubble
schedules unless parallel.reshard_after_forward=false (their weight gradients, taken after the rest of
backward, need the gathered weights still registered) and with torch.compile (the library cannot split a
compiled backward).
"""

import copy
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class
from torch.distributed.tensor import DTensor

from train.config import ParallelConfig
from train.model.config import ModelConfig, ResidualConfig
from train.model.moe.layer import MoE
from train.model.summary import DTYPES
from train.model.transformer import Transformer
from train.parallel.context import SHARDED_KEYS

ONE_STAGE = ("GPipe", "1F1B")  # one stage per rank
LOOPED = ("Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble")  # stages r, r + pp, ...
V_SHAPED = ("ZBVZeroBubble", "DualPipeV")  # stages r and 2pp - 1 - r
ZERO_BUBBLE = ("InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")  # backward split into input and weight parts
SCHEDULES = ONE_STAGE + LOOPED + V_SHAPED


def stages_per_rank(parallel: ParallelConfig) -> int:
    return parallel.pp_stages_per_rank or (1 if parallel.pp_schedule in ONE_STAGE else 2)


def stage_layers(parallel: ParallelConfig, num_layers: int) -> List[range]:
    """The layers of each stage, first to last."""
    count = parallel.pp * stages_per_rank(parallel)
    sizes = list(parallel.pp_layers) or [num_layers // count] * count
    starts = [sum(sizes[:i]) for i in range(count)]
    return [range(start, start + size) for start, size in zip(starts, sizes)]


def rank_stages(parallel: ParallelConfig, pp_rank: int) -> List[int]:
    """The stages pipeline rank `pp_rank` runs, in order."""
    if parallel.pp_schedule in V_SHAPED:
        return [pp_rank, 2 * parallel.pp - 1 - pp_rank]
    return [pp_rank + k * parallel.pp for k in range(stages_per_rank(parallel))]


def fewest_micro_batches(parallel: ParallelConfig) -> int:
    """The fewest micro-batches per step the schedule runs: 1F1B fills the pipeline (pp), DualPipeV both of
    its legs (2 pp); the others run any number."""
    return {"1F1B": parallel.pp, "DualPipeV": 2 * parallel.pp}.get(parallel.pp_schedule, 1)


def pipeline_problems(parallel: ParallelConfig, model: ModelConfig, stage: str,
                      micro_batches: Optional[int] = None) -> List[str]:
    """Why `model` cannot be trained in `parallel.pp` stages as configured (one line each, naming the keys and
    numbers); [] if it can. `micro_batches`: per rank and step (None: not known yet, not checked)."""
    pp, name = parallel.pp, parallel.pp_schedule
    if name not in SCHEDULES:
        return [f"parallel.pp_schedule={name!r}; use one of {', '.join(SCHEDULES)}"]
    per_rank = stages_per_rank(parallel)
    stages = pp * per_rank
    problems = []
    if name in ONE_STAGE and per_rank != 1:
        problems.append(f"parallel.pp_schedule={name} runs one stage per rank, not parallel.pp_stages_per_rank="
                        f"{per_rank}; use a looped or V schedule ({', '.join(LOOPED + V_SHAPED)}) for more")
    elif name in V_SHAPED and per_rank != 2:
        problems.append(f"parallel.pp_schedule={name} runs exactly 2 stages per rank, not parallel.pp_stages_per_rank={per_rank}")
    elif name in LOOPED and per_rank < 2:
        problems.append(f"parallel.pp_schedule={name} runs at least 2 stages per rank, not parallel.pp_stages_per_rank={per_rank}")
    layers = model.num_layers
    if parallel.pp_layers:
        given = list(parallel.pp_layers)
        if len(given) != stages or sum(given) != layers or min(given) < 1:
            problems.append(f"parallel.pp_layers={given} must give {stages} stages (parallel.pp={pp} x {per_rank} per "
                            f"rank) at least one layer each, model.num_layers={layers} in all")
    elif layers % stages:
        even = [layers // stages + (i < layers % stages) for i in range(stages)]
        problems.append(f"model.num_layers={layers} does not split evenly into {stages} stages (parallel.pp={pp} x "
                        f"{per_rank} per rank); give each stage's layers, e.g. parallel.pp_layers=[{','.join(map(str, even))}]")
    if model.tie_embeddings:
        problems.append(f"model.tie_embeddings=true with parallel.pp={pp}: the embedding (first stage) and the head "
                        "(last stage) would share one table across ranks; use tie_embeddings=false or pp=1")
    if model.mtp.depth or model.residual != ResidualConfig():
        problems.append(f"model.mtp and model.residual (hyper-connections, parallel blocks, value residual, branch "
                        f"scales) are not supported with parallel.pp={pp} yet; use pp=1 for them")
    if stage == "dpo":
        problems.append(f"stage=dpo with parallel.pp={pp}: pipeline parallelism covers the next-token stages "
                        "(pretrain, midtrain, sft); use pp=1 for DPO")
    if name in ZERO_BUBBLE and parallel.reshard_after_forward:
        problems.append(f"parallel.pp_schedule={name} needs parallel.reshard_after_forward=false: its weight "
                        "gradients are taken apart from the rest of backward, from the gathered weights")
    if parallel.compile and name in ZERO_BUBBLE:
        problems.append(f"parallel.compile=true with parallel.pp_schedule={name}: the zero-bubble schedules split "
                        "backward in two, which torch.compile's blocks do not allow; use 1F1B or Interleaved1F1B")
    fewest = fewest_micro_batches(parallel)
    if micro_batches is not None and micro_batches < fewest:
        problems.append(f"{micro_batches} micro-batch(es) per rank and step (trainer.global_batch_size / data-parallel "
                        f"ranks / trainer.micro_batch_size): parallel.pp_schedule={name} with parallel.pp={pp} needs at "
                        f"least {fewest}; lower trainer.micro_batch_size or raise trainer.global_batch_size")
    if micro_batches is not None and name in ("Interleaved1F1B", "InterleavedZeroBubble"):
        rounds = max(1, micro_batches // pp)
        if micro_batches % rounds:
            problems.append(f"{micro_batches} micro-batches per rank and step: parallel.pp_schedule={name} runs them in "
                            f"rounds of parallel.pp={pp}; use a multiple of {pp} (trainer.micro_batch_size)")
    return problems


def check_pipeline(parallel: ParallelConfig, model: ModelConfig, stage: str, micro_batches: Optional[int] = None) -> None:
    """Raise the first of `pipeline_problems` (nothing to check without pipeline parallelism)."""
    problems = pipeline_problems(parallel, model, stage, micro_batches) if parallel.pp > 1 else []
    if problems:
        raise ValueError(problems[0])


class KeptLayers(nn.Module):
    """Some of a Transformer's layers under their indices in the whole model (so parameter names stay the
    whole model's); iterated, indexed and assigned by position, like the nn.ModuleList it stands for."""

    def __init__(self, layers: Dict[int, nn.Module]):
        super().__init__()
        for index, layer in layers.items():
            self.add_module(str(index), layer)

    def indexed(self) -> List[tuple[int, nn.Module]]:
        return [(int(key), layer) for key, layer in self._modules.items()]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, position: int) -> nn.Module:
        return list(self._modules.values())[position]

    def __setitem__(self, position: int, layer: nn.Module) -> None:
        self._modules[list(self._modules)[position]] = layer


def split_stages(model: Transformer, parallel: ParallelConfig, pp_rank: int) -> List[tuple[int, Transformer]]:
    """(stage index, the model holding only that stage's modules) for each stage of this pp rank."""
    layers = stage_layers(parallel, model.config.num_layers)
    parts = []
    for stage in rank_stages(parallel, pp_rank):
        part = copy.deepcopy(model)
        part.layers = KeptLayers({index: part.layers[index] for index in layers[stage]})
        if stage > 0:
            part.embed = part.position = None
        if stage < len(layers) - 1:
            part.final_norm = part.output = None
        parts.append((stage, part))
    return parts


class AuxLossGradient(torch.autograd.Function):
    """`x` unchanged; backward also gives `aux` the gradient `weight`, as if `weight * aux` had been added to
    the loss (Megatron-LM's MoEAuxLossAutoScaler): a stage's auxiliary losses reach backward through its output."""

    @staticmethod
    def forward(ctx, x, aux, weight):
        ctx.save_for_backward(aux)
        ctx.weight = weight
        return x.clone()  # not a view of x: the zero-bubble schedules detach stage outputs in place

    @staticmethod
    def backward(ctx, grad_x):
        (aux,) = ctx.saved_tensors
        return grad_x, torch.full_like(aux, ctx.weight), None


class StageModule(nn.Module):
    """One pipeline stage, the module a PipelineStage runs and the stage's FSDP root: its copy of the model from
    the tokens or the previous stage's output up to its last layer (or the final norm). Its MoE layers'
    auxiliary losses join the output's gradient with `aux_weight` (1 / micro-batches per step, set by the
    Pipeline) and are summed, so weighted, in `aux_sum`."""

    def __init__(self, part: Transformer):
        super().__init__()
        self.part, self.aux_weight = part, 1.0
        self.has_moe = bool(part.moe_layers())
        self.aux_sum = torch.zeros(())

    def forward(self, *received, input_ids_BT, doc_ids_BT=None):
        hidden_BTD = self.part.hidden_states(input_ids_BT, doc_ids_BT, inputs_BTD=received[0] if received else None)
        if self.has_moe:
            aux = self.part.aux_loss()
            self.aux_sum = self.aux_sum + aux.detach() * self.aux_weight
            hidden_BTD = AuxLossGradient.apply(hidden_BTD, aux, self.aux_weight)
        return hidden_BTD


class StagedModel(nn.Module):
    """This rank's stages seen as one model, for all but the forward (which the schedule runs): the optimizer,
    the checkpoint, the gradient norm, the router-bias update, train()/eval(). It holds the stages' modules
    under the whole model's names; the stages (`stages`, their FSDP roots) are kept beside, not as children.
    The MoE protocol of train/model/transformer.py spans every MoE layer of the whole model (`moe_sizes`:
    layer index and load size), zeros for the layers other stages hold."""

    def __init__(self, stages: List[StageModule], stage_ids: List[int], num_stages: int, moe_sizes: List[tuple[int, int]]):
        super().__init__()
        parts = [stage.part for stage in stages]
        self.config = parts[0].config
        for name in ("embed", "position", "final_norm", "output"):
            setattr(self, name, next((getattr(p, name) for p in parts if getattr(p, name) is not None), None))
        self.layers = KeptLayers({index: layer for part in parts for index, layer in part.layers.indexed()})
        self.sequence_split = parts[0].sequence_split  # context parallelism's, in every stage
        self.stages, self.stage_ids, self.num_stages, self.moe_sizes = stages, stage_ids, num_stages, moe_sizes

    def _apply(self, fn, recurse=True):
        """`.to()` and `.to_empty()` through each stage: its FSDP root owns the shards and re-registers them."""
        for stage in self.stages:
            stage._apply(fn, recurse)
        return self

    def output_weight(self) -> torch.Tensor:
        return self.output.weight

    def local_moe(self) -> Dict[int, MoE]:
        return {index: m for index, layer in self.layers.indexed() for m in layer.modules() if isinstance(m, MoE)}

    def moe_layers(self) -> List[MoE]:
        return list(self.local_moe().values())

    def moe_layer_ids(self) -> List[int]:
        return [index for index, _ in self.moe_sizes]

    def expert_loads(self) -> List[torch.Tensor]:
        local, device = self.local_moe(), next(self.parameters()).device
        return [local[index].loads() if index in local else torch.zeros(size, dtype=torch.long, device=device)
                for index, size in self.moe_sizes]

    def reset_expert_loads(self) -> None:
        for m in self.moe_layers():
            m.reset_loads()

    @torch.no_grad()
    def update_router_bias(self, loads: List[torch.Tensor]) -> None:
        local = self.local_moe()
        for (index, _), load in zip(self.moe_sizes, loads, strict=True):
            if index in local:
                local[index].update_bias(load)


def staged_model(model: Transformer, parallel: ParallelConfig, pp_rank: int, parallelize_stage) -> StagedModel:
    """Split `model` into this rank's stages, each parallelised by `parallelize_stage(StageModule)`."""
    moe_sizes = [(index, m.num_experts + 2) for index, layer in enumerate(model.layers)
                 for m in layer.modules() if isinstance(m, MoE)]
    parts = split_stages(model, parallel, pp_rank)
    stages = [StageModule(part) for _, part in parts]
    for stage in stages:
        parallelize_stage(stage)
    return StagedModel(stages, [index for index, _ in parts], len(stage_layers(parallel, model.config.num_layers)), moe_sizes)


class Pipeline:
    """Runs micro-batches through this rank's stages under the schedule `parallel.pp_schedule`, built at the
    first step, when the micro-batch's shape is known (stages exchange fixed shapes)."""

    def __init__(self, model: StagedModel, objective, parallel: ParallelConfig, pp_group: dist.ProcessGroup, tp: int,
                 micro_batches: int, device: torch.device):
        self.model, self.objective, self.pp_group, self.tp, self.device = model, objective, pp_group, tp, device
        self.schedule_name, self.dtype, self.micro_batches = parallel.pp_schedule, DTYPES[parallel.param_dtype], micro_batches
        # the global rank that runs each stage
        self.stage_ranks = {stage: dist.get_global_rank(pp_group, rank) for rank in range(parallel.pp)
                            for stage in rank_stages(parallel, rank)}
        self.schedule, self.shape, self.scale, self.loss_sum = None, None, 1.0, None
        for stage in model.stages:
            stage.aux_weight = 1.0 / micro_batches

    def hidden(self, tokens_BT: torch.Tensor, device) -> torch.Tensor:
        """An empty tensor of the hidden states passed between stages for this rank's tokens: [B, T / tp, D]."""
        B, T = tokens_BT.shape
        return torch.empty(B, T // self.tp, self.model.config.dim, dtype=self.dtype, device=device)

    def build(self, tokens_BT: torch.Tensor):
        """The PipelineStages (their activations' shapes given, so nothing runs to find them) and the schedule."""
        last = self.model.num_stages - 1
        hidden = self.hidden(tokens_BT, "meta").requires_grad_()
        final = torch.empty(*tokens_BT.shape, self.model.config.dim, dtype=self.dtype, device="meta",
                            requires_grad=True)  # the final norm's output, gathered under tp
        stages = [PipelineStage(module, index, self.model.num_stages, self.device,
                                input_args=() if index == 0 else hidden, output_args=final if index == last else hidden,
                                group=self.pp_group)
                  for index, module in zip(self.model.stage_ids, self.model.stages)]
        schedule = get_schedule_class(self.schedule_name)
        one = issubclass(schedule, PipelineScheduleSingle)
        return schedule(stages[0] if one else stages, n_microbatches=self.micro_batches, loss_fn=self.loss,
                        scale_grads=False)

    def loss(self, hidden_BTD: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
        """The last stage's loss of one micro-batch: the next-token sum, scaled as the trainer scales it."""
        loss = self.objective.head_loss(self.model, hidden_BTD, targets_BT)
        self.loss_sum = self.loss_sum + loss.detach()
        return loss * self.scale

    def local(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The batch's tokens this rank holds: its zig-zag chunks under context parallelism, else all."""
        split = self.model.sequence_split
        return batch if split is None else {k: split.shard(v) if k in SHARDED_KEYS else v for k, v in batch.items()}

    def step(self, micro_batches: List[Dict[str, torch.Tensor]], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of a step's micro-batches: (the summed next-token loss, 0 but on the last
        stage; the auxiliary losses of this rank's layers, averaged over the micro-batches)."""
        micro_batches = [self.local(batch) for batch in micro_batches]
        if self.schedule is None:
            self.schedule, self.shape = self.build(micro_batches[0]["inputs"]), tuple(micro_batches[0]["inputs"].shape)
        shapes = {tuple(b["inputs"].shape) for b in micro_batches}
        if shapes != {self.shape}:
            raise ValueError(f"pipeline stages exchange fixed shapes: micro-batches of {sorted(shapes)} tokens after "
                             f"{self.shape} at the first step; every batch must hold data.seq_len-token windows")
        self.scale, self.loss_sum = scale, torch.zeros((), device=self.device)
        for stage in self.model.stages:
            stage.aux_sum = torch.zeros((), device=self.device)
        inputs = {"input_ids_BT": torch.cat([b["inputs"] for b in micro_batches])}
        if "doc_ids" in micro_batches[0]:
            inputs["doc_ids_BT"] = torch.cat([b["doc_ids"] for b in micro_batches])
        self.schedule.step(target=torch.cat([b["targets"] for b in micro_batches]), return_outputs=False, **inputs)
        return self.loss_sum, sum(stage.aux_sum for stage in self.model.stages)

    @torch.no_grad()
    def evaluate(self, batches: List[tuple[Dict[str, torch.Tensor], bool]]) -> torch.Tensor:
        """The summed loss of the counted batches of (batch, counted), forward only: one batch at a time through
        the stages in order, each rank running its own and passing the hidden states on (point to point). A
        schedule's eval would take `micro_batches` of one shape at a time, and the V schedules' fails (torch 2.13)."""
        total = torch.zeros((), device=self.device)
        for batch, counted in batches:
            batch = self.local(batch)
            tokens_BT, hidden_BTD = batch["inputs"], None
            kwargs = {"input_ids_BT": tokens_BT, "doc_ids_BT": batch.get("doc_ids")}
            for index, module in zip(self.model.stage_ids, self.model.stages):
                if index > 0 and self.stage_ranks[index - 1] != dist.get_rank():  # else: the previous stage's here
                    hidden_BTD = self.hidden(tokens_BT, self.device)
                    dist.recv(hidden_BTD, src=self.stage_ranks[index - 1], group=self.pp_group)
                hidden_BTD = module(*([] if hidden_BTD is None else [hidden_BTD]), **kwargs)
                if index == self.model.num_stages - 1:
                    total += self.objective.head_loss(self.model, hidden_BTD, batch["targets"]) if counted else 0
                elif self.stage_ranks[index + 1] != dist.get_rank():
                    dist.send(hidden_BTD.contiguous(), dst=self.stage_ranks[index + 1], group=self.pp_group)
        return total


def gathered_stages(model: StagedModel, pp_group: dist.ProcessGroup) -> Dict[str, torch.Tensor]:
    """The whole model's weights on CPU, on global rank 0, {} elsewhere (a collective: every rank calls it):
    each stage's tensors gathered over its data-parallel ranks, then sent to rank 0 over its pp group."""
    ranks = dist.get_process_group_ranks(pp_group)
    state = {}
    for name, tensor in get_model_state_dict(model).items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if ranks[0] == 0:  # rank 0's pipeline: one rank of each stage
            state[name] = full.cpu()
    if ranks[0] != 0:
        return {}
    stages = [None] * len(ranks) if dist.get_rank() == 0 else None
    dist.gather_object(state, stages, dst=0, group=pp_group)
    return {name: tensor for stage in stages for name, tensor in stage.items()} if dist.get_rank() == 0 else {}
