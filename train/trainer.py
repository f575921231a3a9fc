"""The training loop: one Trainer owns model, optimizer, data stream, checkpoints and metrics.

    Trainer(config).train()

Each optimizer step reads `accum` micro-batches per rank (the global batch is fixed; the accumulation
adapts to the number of ranks), normalises the summed token losses by the global number of target
tokens (so 1 rank and N ranks compute the same loss and gradients), clips the global gradient norm,
and steps AdamW and the schedule. Checkpoints are saved every `checkpoint.every` steps, at the end,
and when the run is asked to stop (preemption) by SIGTERM/SIGUSR1 to the workers or by a file
`<run dir>/stop` (what a SLURM batch script writes when it gets the time-limit warning, since torchrun
doesn't pass signals on): the current step finishes, a checkpoint is written, and the process exits
cleanly. A restarted run resumes from the latest complete one.
"""

import math
import shutil
import signal
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from data.reader import PreparedData
from train.checkpoint import Checkpointer, latest_complete
from train.config import TrainConfig
from train.data_loader import check_batch_sizes, stage_data, to_device, train_loader, validation_batches
from train.distributed import World, all_reduce_sum, init_world
from train.expert_parallel import global_experts, grad_norm_and_clip
from train.metrics import MetricsLogger, Throughput, format_line, memory_gb, peak_tflops
from train.model import load_model, save_model
from train.model.checkpoint import model_from_state_dict
from train.model.config import apply_overrides, to_model_config
from train.model.inspect import summarize
from train.model.moe.metrics import moe_metrics
from train.model.transformer import Transformer
from train.objectives import build_objective
from train.optim import build_optimizer, build_scheduler
from train.parallelize import DTYPES, parallelize

STOP_FILE = "stop"  # in the run folder: finish the step, checkpoint, exit 0 (removed once acted on)


class NonFiniteLoss(RuntimeError):
    pass


def initial_model(config: TrainConfig) -> Transformer:
    """The whole model with its initial weights, on CPU: checkpoint.init_from's weights (under the
    resolved config, e.g. with YaRN switched on), or a seeded random init."""
    if config.checkpoint.init_from:
        return model_from_state_dict(config.model, load_model(config.checkpoint.init_from).state_dict())
    torch.manual_seed(config.trainer.seed)
    return Transformer(config.model)


def gathered_experts(model: torch.nn.Module, keep: bool) -> Dict[str, torch.Tensor]:
    """With expert parallelism, every expert parameter with ALL its experts [E, ...] (gathered over edp
    and the ep group; a collective, every rank calls it), on CPU where `keep`, else {}. Without EP: {}."""
    ep = getattr(model, "expert_parallel", None)
    if ep is None:
        return {}
    sharded = get_model_state_dict(model)  # FSDP's sharded parameters, the local experts over edp
    gathered = {}
    for name in ep.expert_parameter_names:
        tensor = global_experts(sharded[name], ep).full_tensor()
        if keep:
            gathered[name] = tensor.cpu()
    return gathered


def resolve_model_config(config: TrainConfig) -> None:
    """With checkpoint.init_from, the model is the folder's (the `model=` preset is not used), changed
    by checkpoint.init_overrides; the resolved config is what config.yaml records."""
    if not config.checkpoint.init_from:
        return
    folder = Path(config.checkpoint.init_from)
    if (folder / "model.yaml").is_file():
        model_config = to_model_config(OmegaConf.load(folder / "model.yaml"))
    else:
        model_config = load_model(folder).config  # a Hugging Face folder: its adapter maps the config
    config.model = apply_overrides(model_config, dict(config.checkpoint.init_overrides))


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Global L2 norm of all gradients (over every shard of every rank), clipped when max_norm > 0."""
    # dense gradients on the dp mesh, expert gradients (parallel.ep > 1) on the edp mesh: see there
    return grad_norm_and_clip([p.grad for p in parameters if p.grad is not None], max_norm)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        resolve_model_config(config)
        self.world: World = init_world(config.parallel)
        if config.trainer.deterministic:
            torch.use_deterministic_algorithms(True)
        self.run_dir = config.run_dir
        if config.stage in ("sft", "dpo") and not config.checkpoint.init_from:
            raise ValueError(f"stage={config.stage} starts from a model: set checkpoint.init_from=<a model folder>")
        if config.stage in ("pretrain", "midtrain"):
            self.check_data()
        # the tokenizer travels with the model: the prepared data's for pre-training, the start model's after
        self.tokenizer_folder = Path(config.checkpoint.init_from or config.data.path)
        if not (self.tokenizer_folder / "tokenizer.json").is_file():
            self.tokenizer_folder = Path(config.data.path)
        self.data = stage_data(config.stage, config.data, self.tokenizer_folder)
        self.say(f"data: {self.data.report}")
        self.dp_ranks = self.world.size
        self.accum = check_batch_sizes(config.trainer.global_batch_size, config.trainer.micro_batch_size, self.dp_ranks)

        self.model = self.build_model()
        self.moe_layer_ids = self.model.moe_layer_ids()
        reference = None
        if config.stage == "dpo":  # the frozen reference: the starting model, sharded like the policy
            reference = self.build_model().eval().requires_grad_(False)
        self.objective = build_objective(config.stage, config.dpo, config.trainer.loss_chunk_tokens, reference)
        self.optimizer = build_optimizer(self.model, config.optim, self.world.device)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.trainer.max_steps)
        self.step, self.samples_consumed, self.tokens_seen, self.skipped_in_a_row = 0, 0, 0, 0

        self.checkpointer = Checkpointer(self.run_dir, config.checkpoint, self.world.rank)
        self.checkpointer.remove_incomplete()
        latest = latest_complete(self.checkpointer.root) if config.checkpoint.resume else None
        if latest is not None:
            state = self.checkpointer.load(latest, self.model, self.optimizer)
            self.step, self.samples_consumed, self.tokens_seen = state["step"], state["samples_consumed"], state["tokens_seen"]
            self.scheduler.load_state_dict(state["scheduler"])
            self.say(f"resumed from {latest} (step {self.step}, {self.samples_consumed:,} samples consumed)")
        self.checkpointer.last_saved_step = self.step if latest is not None else None

        resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
        self.metrics = MetricsLogger(self.run_dir, config.logging, resolved, self.step, self.world.is_main, config.stage)
        summary = summarize(config.model, context=config.data.seq_len, dtype=config.parallel.param_dtype)
        peak = peak_tflops(config.logging, self.world.device, DTYPES[config.parallel.param_dtype])
        self.throughput = Throughput(summary.flops_per_token, peak, self.world.size)
        self.stop_requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self.request_stop)

    # --- set-up -----------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.world.is_main:
            print(message, flush=True)

    def check_data(self) -> None:
        data = PreparedData(self.config.data.path)
        if data.vocab_size > self.config.model.vocab_size:
            raise ValueError(
                f"the tokenizer of {self.config.data.path} has {data.vocab_size} tokens but model.vocab_size="
                f"{self.config.model.vocab_size}; set model.vocab_size={data.vocab_size} or more"
            )

    def build_model(self) -> torch.nn.Module:
        """Build on the meta device, shard, allocate on the real device, then broadcast rank 0's weights.
        With expert parallelism (parallel.ep > 1) the ranks of an ep group keep different experts, so
        every rank builds the full model with real weights (the same seeded init, or checkpoint.init_from)
        and parallelize() cuts out its own experts before sharding (FSDP moves the shards to the device)."""
        if self.config.parallel.ep > 1:
            return parallelize(initial_model(self.config), self.config.parallel, self.world).to(self.world.device)
        with torch.device("meta"):
            model = Transformer(self.config.model)
        model = parallelize(model, self.config.parallel, self.world)
        model.to_empty(device=self.world.device)
        full = initial_model(self.config).state_dict() if self.world.is_main else {}
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return model

    def request_stop(self, signum, frame) -> None:
        self.stop_requested = True
        self.say(f"received {signal.Signals(signum).name}: finishing this step, then checkpointing and exiting")

    def agreed_to_stop(self) -> bool:
        """Whether any rank got a signal, or rank 0 found the stop file (one stat per step, on one rank)."""
        stop_file = self.run_dir / STOP_FILE
        asked = self.stop_requested or (self.world.is_main and stop_file.exists())
        flag = torch.tensor([float(asked)], device=self.world.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.world.is_main and stop_file.exists():
            self.say(f"found {stop_file}: checkpointing this step and exiting")
            stop_file.unlink()
        return bool(flag.item())

    # --- the loop ---------------------------------------------------------------------------------

    def loss_sum(self, batch) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """(sum of the losses, the model's auxiliary loss (MoE balancing; zero without MoE), sums of statistics)."""
        return self.objective(self.model, batch)

    def train_step(self, micro_batches) -> Optional[Dict[str, float]]:
        device = self.world.device
        local = [sum(self.objective.count(b) for b in micro_batches), sum(b["inputs"].numel() for b in micro_batches)]
        global_count, self.step_tokens = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device)).tolist()
        # FSDP averages gradients over the dp ranks, so scale each rank's sum by ranks / global count.
        scale = self.dp_ranks / global_count
        total, aux_total, stats = torch.zeros((), device=device), torch.zeros((), device=device), {}
        for batch in micro_batches:
            loss, aux, batch_stats = self.loss_sum(batch)
            # the auxiliary loss is a mean per micro-batch: averaged over micro-batches here, over ranks by FSDP
            (loss * scale + aux / len(micro_batches)).backward()
            total += loss.detach()
            aux_total += aux.detach() / len(micro_batches)
            for key, value in batch_stats.items():
                stats[key] = stats.get(key, 0.0) + value.detach()
        loss = (all_reduce_sum(total) / global_count).item()
        grad_norm = clip_grad_norm(self.model.parameters(), self.config.optim.grad_clip).item()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return self.handle_nonfinite(loss, grad_norm)
        self.skipped_in_a_row = 0
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        result = {"loss": loss, "grad_norm": grad_norm, "lr": lr}
        result.update({key: (all_reduce_sum(value) / global_count).item() for key, value in stats.items()})
        if self.moe_layer_ids:
            result["aux_loss"] = (all_reduce_sum(aux_total) / self.world.size).item()
            result.update(self.balance_experts())
        return result

    def balance_experts(self) -> Dict[str, float]:
        """Once per optimizer step: global expert loads -> the aux-loss-free router bias (DeepSeek-V3),
        and the load metrics (min/max/coefficient of variation per layer, share of zero experts)."""
        loads = [all_reduce_sum(load) for load in self.model.expert_loads()]
        self.model.update_router_bias(loads)
        self.model.reset_expert_loads()
        return moe_metrics(loads, self.moe_layer_ids)

    def handle_nonfinite(self, loss: float, grad_norm: float) -> None:
        self.skipped_in_a_row += 1
        what = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {self.step + 1} " \
               f"(loss {loss}, grad norm {grad_norm})"
        if self.config.trainer.nonfinite == "stop" or self.skipped_in_a_row > self.config.trainer.max_skipped:
            raise NonFiniteLoss(
                f"{what}; stopping (trainer.nonfinite={self.config.trainer.nonfinite}, "
                f"{self.skipped_in_a_row} in a row). Lower optim.lr, raise optim.warmup_steps, or check the data"
            )
        self.say(f"warning: {what}; the step is skipped ({self.skipped_in_a_row} in a row)")
        return None

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Loss (and the objective's statistics, e.g. DPO reward accuracy) on the held-out samples."""
        self.model.eval()
        device, cfg = self.world.device, self.config
        total, count, stats = torch.zeros((), device=device), torch.zeros((), device=device), {}
        for raw, counts in validation_batches(self.data, cfg.trainer.micro_batch_size, cfg.trainer.val_samples,
                                              self.world.rank, self.world.size):
            batch = to_device(raw, device, cfg.data.document_masking)
            loss, _, batch_stats = self.loss_sum(batch)
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

    def save(self) -> None:
        if self.checkpointer.last_saved_step == self.step:
            return
        state = {"step": self.step, "samples_consumed": self.samples_consumed, "tokens_seen": self.tokens_seen,
                 "scheduler": self.scheduler.state_dict(), "world_size": self.world.size}
        self.checkpointer.save(self.step, self.model, self.optimizer, state)

    def record_samples(self, micro_batches) -> None:
        path = self.run_dir / "samples" / f"rank_{self.world.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        indices = [i for b in micro_batches for i in b["index"].tolist()]
        with open(path, "a") as f:
            f.write(f'{{"step": {self.step + 1}, "indices": {indices}}}\n')

    def train(self) -> Dict[str, float]:
        cfg = self.config
        trainer, max_steps = cfg.trainer, cfg.trainer.max_steps
        loader = iter(train_loader(self.data, cfg.data.num_workers, self.samples_consumed, trainer.global_batch_size,
                                   trainer.micro_batch_size, self.world.rank, self.world.size))
        self.say(f"training {cfg.stage} in {self.run_dir}: {self.world.size} rank(s) on {self.world.device.type}, "
                 f"{self.accum} micro-batch(es) of {trainer.micro_batch_size} per rank per step, "
                 f"{trainer.global_batch_size} samples of up to {cfg.data.seq_len} tokens per step")
        last: Dict[str, float] = {}
        self.model.train()
        self.throughput.reset()
        while self.step < max_steps:
            micro_batches = [to_device(next(loader), self.world.device, cfg.data.document_masking) for _ in range(self.accum)]
            if trainer.record_samples:
                self.record_samples(micro_batches)
            result = self.train_step(micro_batches)
            self.samples_consumed += trainer.global_batch_size
            self.throughput.add(self.step_tokens)
            if result is not None:
                self.step += 1
                self.tokens_seen += int(self.step_tokens)
                last = result
                if self.step % trainer.log_every == 0 or self.step == max_steps:
                    rate, mfu = self.throughput.read()
                    record = {"step": self.step, **result, "tokens_per_s": rate, "mfu": mfu,
                              "tokens_seen": self.tokens_seen, "memory_gb": memory_gb(self.world.device)}
                    self.metrics.log(record)
                    self.say(format_line(record, max_steps))
                if (trainer.val_every and self.step % trainer.val_every == 0) or self.step == max_steps:
                    evaluation = self.validate()
                    last.update(evaluation)
                    self.metrics.log({"step": self.step, **evaluation})
                    self.say(f"step {self.step:>5}/{max_steps} | " + " | ".join(
                        f"{key.replace('_', ' ')} {value:.4f}" for key, value in evaluation.items()))
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save()
            if self.agreed_to_stop():
                self.save()
                self.say(f"stopped at step {self.step} on request; checkpoint saved")
                break
        if self.step >= max_steps:
            self.save()
            self.export_model()
        self.checkpointer.wait()
        final = self.checkpointer.root / f"step_{self.step:08d}"
        scores = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k in ("loss", "val_loss", "val_reward_accuracy"))
        self.say(f"{cfg.stage} finished at step {self.step}{': ' + scores if scores else ''}\n"
                 f"  checkpoint {final.resolve()}\n  model      {(self.run_dir / 'model').resolve()}\n"
                 f"  metrics    {(self.run_dir / 'metrics.jsonl').resolve()}")
        return last

    def export_model(self) -> None:
        """The final weights, gathered on rank 0, as a plain model folder (model.yaml + model.safetensors
        + the tokenizer): what `load_model`, `train.export` and the next stage's `checkpoint.init_from` read."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        full.update(gathered_experts(self.model, self.world.is_main))
        if self.world.is_main:
            folder = save_model(model_from_state_dict(self.config.model, full), self.run_dir / "model")
            for name in ("tokenizer.json", "tokenizer_config.json"):
                if (self.tokenizer_folder / name).is_file():
                    shutil.copy(self.tokenizer_folder / name, folder / name)
        dist.barrier()

    def close(self) -> None:
        self.checkpointer.close()
        self.metrics.close()
