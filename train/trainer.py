"""The training loop, the same for every stage: Trainer(config).train().

Each optimizer step reads `accumulation` micro-batches per rank (the global batch is fixed; the split
adapts to the number of ranks, train/batch_plan.py), normalises the summed token losses by the global
number of target tokens (so 1 rank and N ranks compute the same loss and gradients), clips the global
gradient norm, and steps AdamW and the schedule. Everything around the steps (console, metrics, W&B,
validation, checkpoint cadence, stop requests, the final model folder) is a callback
(train/callbacks.py); what a stage reads and optimises is train/stages.py's; ranks, meshes and
sharding are train/parallel/'s.
"""

import math
import sys
from typing import Dict, List

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from tqdm import tqdm

from train import stages
from train.batch_plan import batch_plan
from train.callbacks import default_callbacks
from train.checkpoint import Checkpointer, ModelState, OptimizerState
from train.config import TrainConfig
from train.data_loader import DataStream, to_device, validation_batches
from train.model.transformer import Transformer
from train.nonfinite import NonFiniteGuard
from train.optim import build_optimizer, build_scheduler, register_router_bias_update
from train.parallel.context import ShardedSequences
from train.parallel.dims import ParallelDims
from train.parallel.fsdp import forward_precision, parallelize, read_local_shards
from train.parallel.grad_norm import clip_grad_norm
from train.parallel.pipeline import Pipeline, check_pipeline
from train.parallel.world import World, all_reduce_sum, init_world, set_collective_timeout, set_determinism
from train.progress import Progress, StepResult
from train.reference import precomputed


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.stage = stages.stage_of(config)  # resolves config.model from init.weights
        set_determinism(config.trainer.deterministic)  # before any CUDA work
        self.world: World = init_world(config.parallel)
        self.dims = ParallelDims.build(config.parallel, self.world, config.model, config.data.seq_len, config.stage)
        set_collective_timeout(config.parallel)  # every group exists now: parallel.timeout_s on each
        self.run_dir = config.run_dir
        self.data = stages.stage_data(self.stage, config, self.world.rank, self.world.size)
        self.say(f"data: {self.data.report}")
        self.plan = batch_plan(config.trainer.global_batch_size, config.trainer.micro_batch_size, self.dims.dp_size)
        check_pipeline(config.parallel, config.model, config.stage, self.plan.accumulation)
        self.model = self.build_model()
        # every forward and its loss run in it: torch.autocast on one process, nothing under FSDP (it casts itself)
        self.precision = forward_precision(config.parallel, self.dims, self.world.device)
        reference = stages.reference(self.stage, config)
        if reference == "precomputed":  # the reference runs once now, and is freed before training
            with self.precision():
                self.data = precomputed(self.data, self.build_reference, config, self.world, self.dims.dp_size,
                                        self.plan.micro_batch, self.say)
        live = self.build_reference() if reference == "live" else None
        self.objective = stages.objective(self.stage, config, live)
        # with pipeline stages, the schedule runs the micro-batches through them (train/parallel/pipeline.py)
        self.pipeline = Pipeline(self.model, self.objective, config.parallel, self.dims.pp_mesh.get_group(), self.dims.tp,
                                 self.plan.accumulation, self.world.device) if self.dims.pp > 1 else None
        if self.dims.cp > 1:  # each rank's zig-zag chunks of every batch (train/parallel/context.py)
            self.objective = ShardedSequences(self.objective, self.model.sequence_split)
        self.optimizer = build_optimizer(self.model, config.optim, self.world.device)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.trainer.max_steps)
        self.progress = Progress()
        self.guard = NonFiniteGuard(config.trainer.nonfinite, config.trainer.max_skipped, self.world.device, self.say)
        record = (self.run_dir / "samples" / f"rank_{self.dims.dp_rank}.jsonl"
                  if config.trainer.record_samples and self.dims.dp_leader else None)
        self.stream = DataStream(self.data, config.trainer.global_batch_size, self.plan.micro_batch,
                                 config.data.num_workers, self.dims.dp_rank, self.dims.dp_size, self.world.device,
                                 config.data.document_masking, record)
        self.checkpointer = Checkpointer(
            self.run_dir, config.checkpoint, self.world.rank, self.dims,
            sharded={"model": ModelState(self.model, self.dims), "optim": OptimizerState(self.model, self.optimizer, self.dims)},
            replicated={"progress": self.progress, "data": self.stream, "scheduler": self.scheduler},
            device=self.world.device)
        # optimizer pre-step hooks, in this order: an async save's copy of the weights must be complete
        # before the router-bias update or the step changes them
        self.optimizer.register_step_pre_hook(self.checkpointer.wait_for_staging)
        self.router_loads = register_router_bias_update(self.optimizer, self.model)
        resumed = self.checkpointer.resume()
        if resumed is not None:
            self.say(f"resumed from {resumed} (step {self.progress.step}, {self.stream.samples_consumed:,} samples consumed)")
        self.callbacks = default_callbacks(self)
        self.stop_requested = False

    def say(self, message: str) -> None:
        if self.world.is_main:
            tqdm.write(message, file=sys.stdout)  # above the progress bar, when there is one (train/progress_display.py)
            sys.stdout.flush()

    def build_model(self) -> torch.nn.Module:
        """Build on the meta device, shard, allocate, then fill in the weights: each rank reads its own shard of
        init.weights, or rank 0 broadcasts its seeded random init. With expert parallelism every rank builds
        the full model (its ep group's ranks keep different experts, cut out by parallelize), and so it does when
        a chat template's tokens grow the vocabulary of init.weights (train/stages.py)."""
        if self.dims.ep > 1 or stages.grows_vocab(self.config):  # whole on every rank: experts cut out, or rows added
            return parallelize(stages.initial_model(self.config), self.config.parallel, self.dims).to(self.world.device)
        with torch.device("meta"):
            model = Transformer(self.config.model)
        model = parallelize(model, self.config.parallel, self.dims)
        model.to_empty(device=self.world.device)
        if self.config.init.weights:
            read_local_shards(model, self.config.init.weights, self.config.model)
        else:
            full = stages.initial_model(self.config).state_dict() if self.world.is_main else {}
            # not strict under pipeline parallelism: a rank's stages take their share of the whole model's tensors
            set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                       strict=self.dims.pp == 1))
        model.reset_expert_loads()  # non-persistent buffers are in no state dict: to_empty left them uninitialised
        return model

    def build_reference(self) -> torch.nn.Module:
        """The frozen reference: the starting model, sharded like the policy."""
        return self.build_model().eval().requires_grad_(False)

    def callback(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def reports(self, step: int) -> bool:
        """Whether step `step`'s figures go to the host (the console, metrics.jsonl, W&B): every
        trainer.log_every steps and the last one. Other steps never wait for the device."""
        return step % self.config.trainer.log_every == 0 or step == self.config.trainer.max_steps

    def train_step(self, micro_batches: List[Dict[str, object]], report: bool) -> StepResult:
        """One optimizer step: its tokens, whether it was taken, and (when `report`) its figures."""
        device, step = self.world.device, self.progress.step + 1
        # what the losses sum over and the tokens, counted on the host by the collate functions and summed
        # over the ranks in place through the CPU backend (gloo): no device->host copy
        counts = np.array([sum(b["count"] for b in micro_batches), sum(b["inputs"].numel() for b in micro_batches)],
                          dtype=np.float64)
        dist.all_reduce(torch.from_numpy(counts))
        counts /= self.dims.sample_copies  # the cp and tp ranks of a data-parallel rank counted the same samples
        global_count, tokens = float(counts[0]), int(counts[1])
        # FSDP averages gradients over its ranks (dp x cp), so scale each rank's sum by them / global count.
        scale = self.dims.grad_divisor / global_count
        total, aux_total, stats = torch.zeros((), device=device), torch.zeros((), device=device), {}
        if self.pipeline is not None:  # total: 0 but on the last stage's ranks; aux_total: this rank's layers'
            total, aux_total = self.pipeline.step(micro_batches, scale)
        else:
            for batch in micro_batches:
                with self.precision():
                    loss, aux, batch_stats = self.objective(self.model, batch)
                # the auxiliary loss is a mean per micro-batch: averaged over micro-batches here, over ranks by FSDP
                (loss * scale + aux / len(micro_batches)).backward()
                total += loss.detach()
                aux_total += aux.detach() / len(micro_batches)
                for key, value in batch_stats.items():
                    stats[key] = stats.get(key, 0.0) + value.detach()
        # the same on every rank, so every rank decides alike (each tp rank holds the whole sum of its tokens)
        loss_sum = all_reduce_sum(total) / self.dims.tp
        grad_norm = clip_grad_norm(self.model.parameters(), self.config.optim.grad_clip, self.dims)
        lr = self.scheduler.get_last_lr()[0]
        if report or not self.guard.on_device(self.optimizer):
            self.guard.report()
            loss_value, norm_value = (loss_sum / global_count).item(), grad_norm.item()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                self.optimizer.zero_grad(set_to_none=True)
                self.guard.skip_on_host(loss_value, norm_value, step)
                return StepResult(tokens, taken=False)
            self.guard.finite_on_host()
            self.optimizer.step()  # the router-bias update runs first, as a pre-step hook (train/optim.py)
        else:
            self.guard.step_on_device(self.optimizer, ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm)), step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not report:
            return StepResult(tokens, taken=True)
        figures = {"loss": loss_value, "grad_norm": norm_value, "lr": lr}
        figures.update({key: (all_reduce_sum(value) / global_count).item() for key, value in stats.items()})
        if self.router_loads.layer_ids:
            # each rank holds its stages' layers' share: summed over a pipeline's ranks, then averaged
            figures["aux_loss"] = (all_reduce_sum(aux_total) / (self.world.size // self.dims.pp)).item()
            figures.update(self.router_loads.metrics())
        return StepResult(tokens, taken=True, figures=figures)

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Loss (and the objective's statistics, e.g. DPO reward accuracy) on the held-out samples."""
        self.model.eval()
        device, cfg = self.world.device, self.config
        total, count, stats = torch.zeros((), device=device), torch.zeros((), device=device), {}
        batches = ((to_device(raw, device, cfg.data.document_masking), counts) for raw, counts in
                   validation_batches(self.data, self.plan.micro_batch, cfg.trainer.val_samples, self.dims.dp_rank,
                                      self.dims.dp_size))
        if self.pipeline is not None:  # the stages run them through together; the last one sums the loss
            batches = list(batches)
            total = self.pipeline.evaluate(batches)
            count += sum(batch["count"] for batch, counts in batches if counts)
        else:
            for batch, counts in batches:
                with self.precision():
                    loss, _, batch_stats = self.objective(self.model, batch)
                if not counts:
                    continue
                total += loss
                count += batch["count"]
                for key, value in batch_stats.items():
                    stats[key] = stats.get(key, 0.0) + value
        self.model.train()
        self.model.reset_expert_loads()  # validation's routing does not count towards balancing
        count = all_reduce_sum(count) / self.dims.sample_copies
        result = {"val_loss": (all_reduce_sum(total) / self.dims.tp / count).item()}
        result.update({f"val_{key}": (all_reduce_sum(value) / count).item() for key, value in stats.items()})
        return result

    def train(self) -> Dict[str, float]:
        """Steps until trainer.max_steps or a stop request; the last figures (training and validation)."""
        self.model.train()
        self.callback("on_train_start")
        while self.progress.step < self.config.trainer.max_steps and not self.stop_requested:
            step = self.progress.step + 1
            result = self.train_step(self.stream.next_step(self.plan.accumulation, step), self.reports(step))
            if result.taken:
                self.progress.step = step
                self.progress.tokens_seen += result.tokens
            if result.figures is not None:
                self.progress.last = dict(result.figures)
            self.callback("on_step", result)
        self.callback("on_train_end")
        return self.progress.last

    @property
    def finished(self) -> bool:
        return self.progress.step >= self.config.trainer.max_steps

    def close(self) -> None:
        for callback in self.callbacks:
            callback.close()
        self.checkpointer.close()
        self.dims.close()
