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
from typing import Dict, List

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from train import stages
from train.batch_plan import batch_plan
from train.callbacks import default_callbacks
from train.checkpoint import Checkpointer, ModelState, OptimizerState
from train.config import TrainConfig
from train.data_loader import DataStream, to_device, validation_batches
from train.model.transformer import Transformer
from train.optim import build_optimizer, build_scheduler, register_router_bias_update
from train.parallel.dims import ParallelDims
from train.parallel.fsdp import parallelize
from train.parallel.grad_norm import clip_grad_norm
from train.parallel.world import World, all_reduce_sum, init_world
from train.progress import Progress, StepResult


class NonFiniteLoss(RuntimeError):
    pass


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.stage = stages.stage_of(config)  # resolves config.model from init.weights
        self.world: World = init_world(config.parallel)
        if config.trainer.deterministic:
            torch.use_deterministic_algorithms(True)
        self.dims = ParallelDims.build(config.parallel, self.world, config.model)
        self.run_dir = config.run_dir
        self.data = stages.stage_data(self.stage, config)
        self.say(f"data: {self.data.report}")
        self.plan = batch_plan(config.trainer.global_batch_size, config.trainer.micro_batch_size, self.dims.dp_size)
        self.model = self.build_model()
        reference = self.build_model().eval().requires_grad_(False) if self.stage.reference else None
        self.objective = stages.objective(self.stage, config, reference)
        self.optimizer = build_optimizer(self.model, config.optim, self.world.device)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.trainer.max_steps)
        self.router_loads = register_router_bias_update(self.optimizer, self.model)
        self.progress = Progress()
        record = self.run_dir / "samples" / f"rank_{self.world.rank}.jsonl" if config.trainer.record_samples else None
        self.stream = DataStream(self.data, config.trainer.global_batch_size, self.plan.micro_batch,
                                 config.data.num_workers, self.world.rank, self.dims.dp_size, self.world.device,
                                 config.data.document_masking, record)
        self.checkpointer = Checkpointer(
            self.run_dir, config.checkpoint, self.world.rank, self.dims,
            sharded={"model": ModelState(self.model, self.dims), "optim": OptimizerState(self.model, self.optimizer, self.dims)},
            replicated={"progress": self.progress, "data": self.stream, "scheduler": self.scheduler})
        resumed = self.checkpointer.resume()
        if resumed is not None:
            self.say(f"resumed from {resumed} (step {self.progress.step}, {self.stream.samples_consumed:,} samples consumed)")
        self.callbacks = default_callbacks(self)
        self.stop_requested = False

    def say(self, message: str) -> None:
        if self.world.is_main:
            print(message, flush=True)

    def build_model(self) -> torch.nn.Module:
        """Build on the meta device, shard, allocate on the real device, then broadcast rank 0's weights.
        With expert parallelism the ranks of an ep group keep different experts, so every rank builds the
        full model with real weights (the same seeded init, or init.weights) and parallelize() cuts out its
        own experts before sharding (FSDP moves the shards to the device)."""
        if self.dims.ep > 1:
            return parallelize(stages.initial_model(self.config), self.config.parallel, self.dims).to(self.world.device)
        with torch.device("meta"):
            model = Transformer(self.config.model)
        model = parallelize(model, self.config.parallel, self.dims)
        model.to_empty(device=self.world.device)
        full = stages.initial_model(self.config).state_dict() if self.world.is_main else {}
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return model

    def callback(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def train_step(self, micro_batches: List[Dict[str, torch.Tensor]]) -> StepResult:
        """One optimizer step: its tokens and figures (loss, grad norm, lr, statistics; None when skipped)."""
        device = self.world.device
        local = [sum(self.objective.count(b) for b in micro_batches), sum(b["inputs"].numel() for b in micro_batches)]
        global_count, tokens = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device)).tolist()
        # FSDP averages gradients over the dp ranks, so scale each rank's sum by ranks / global count.
        scale = self.dims.dp_size / global_count
        total, aux_total, stats = torch.zeros((), device=device), torch.zeros((), device=device), {}
        for batch in micro_batches:
            loss, aux, batch_stats = self.objective(self.model, batch)
            # the auxiliary loss is a mean per micro-batch: averaged over micro-batches here, over ranks by FSDP
            (loss * scale + aux / len(micro_batches)).backward()
            total += loss.detach()
            aux_total += aux.detach() / len(micro_batches)
            for key, value in batch_stats.items():
                stats[key] = stats.get(key, 0.0) + value.detach()
        loss = (all_reduce_sum(total) / global_count).item()
        grad_norm = clip_grad_norm(self.model.parameters(), self.config.optim.grad_clip, self.dims).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.skip_nonfinite(loss, grad_norm)
            return StepResult(int(tokens), None)
        self.progress.skipped_in_a_row = 0
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()  # the router-bias update runs first, as a pre-step hook (train/optim.py)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        result = {"loss": loss, "grad_norm": grad_norm, "lr": lr}
        result.update({key: (all_reduce_sum(value) / global_count).item() for key, value in stats.items()})
        if self.router_loads.layer_ids:
            result["aux_loss"] = (all_reduce_sum(aux_total) / self.world.size).item()
            result.update(self.router_loads.metrics())
        return StepResult(int(tokens), result)

    def skip_nonfinite(self, loss: float, grad_norm: float) -> None:
        """Count a non-finite step; stop when trainer.nonfinite=stop or too many came in a row."""
        self.progress.skipped_in_a_row += 1
        what = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {self.progress.step + 1} " \
               f"(loss {loss}, grad norm {grad_norm})"
        trainer = self.config.trainer
        if trainer.nonfinite == "stop" or self.progress.skipped_in_a_row > trainer.max_skipped:
            raise NonFiniteLoss(f"{what}; stopping (trainer.nonfinite={trainer.nonfinite}, "
                                f"{self.progress.skipped_in_a_row} in a row). Lower optim.lr, raise optim.warmup_steps, "
                                "or check the data")
        self.say(f"warning: {what}; the step is skipped ({self.progress.skipped_in_a_row} in a row)")

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Loss (and the objective's statistics, e.g. DPO reward accuracy) on the held-out samples."""
        self.model.eval()
        device, cfg = self.world.device, self.config
        total, count, stats = torch.zeros((), device=device), torch.zeros((), device=device), {}
        for raw, counts in validation_batches(self.data, self.plan.micro_batch, cfg.trainer.val_samples,
                                              self.world.rank, self.dims.dp_size):
            batch = to_device(raw, device, cfg.data.document_masking)
            loss, _, batch_stats = self.objective(self.model, batch)
            if not counts:
                continue
            total += loss
            count += self.objective.count(batch)
            for key, value in batch_stats.items():
                stats[key] = stats.get(key, 0.0) + value
        self.model.train()
        self.model.reset_expert_loads()  # validation's routing does not count towards balancing
        count = all_reduce_sum(count)
        result = {"val_loss": (all_reduce_sum(total) / count).item()}
        result.update({f"val_{key}": (all_reduce_sum(value) / count).item() for key, value in stats.items()})
        return result

    def train(self) -> Dict[str, float]:
        """Steps until trainer.max_steps or a stop request; the last figures (training and validation)."""
        self.model.train()
        self.callback("on_train_start")
        while self.progress.step < self.config.trainer.max_steps and not self.stop_requested:
            result = self.train_step(self.stream.next_step(self.plan.accumulation, self.progress.step + 1))
            if result.taken:
                self.progress.step += 1
                self.progress.tokens_seen += result.tokens
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
