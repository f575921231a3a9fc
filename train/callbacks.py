"""What happens around the training steps, as callbacks the Trainer calls (train/trainer.py).

Hooks, each called as `hook(trainer, ...)` on every callback in order (all optional):
    on_train_start     before the first step
    on_step(result)    after each step (a StepResult: its tokens, whether it was taken, and at reporting
                       steps its figures, train/progress.py); trainer.progress.step counts the steps taken
    on_train_end       after the loop (finished, or stopped on request)
    close()            at the end of the process, also after an error
The default set, in order: console + metrics file + W&B at `trainer.log_every` (tokens/s, MFU, memory),
validation at `trainer.val_every` and at the end, multiple-choice accuracy (when `downstream.path` is set:
DownstreamEval), checkpoints every `checkpoint.every` steps, stop requests (SIGTERM/SIGUSR1 to a worker,
or the run folder's `stop` file: finish the step, checkpoint, exit 0), the final model folder, and the
closing summary.
"""

import shutil
import signal

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from tokenizers import Tokenizer
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from train import run_folder
from train.downstream import accuracies, read_questions, score_share
from train.metrics import MetricsLogger, Throughput, format_line, memory_stats, peak_tflops, reset_memory_stats
from train.model import save_model
from train.model.folder import model_from_state_dict
from train.model.summary import summarize
from train.parallel.expert import gathered_experts
from train.parallel.fsdp import DTYPES
from train.parallel.pipeline import gathered_stages
from train.parallel.world import all_reduce_sum
from train.plots import plot_run
from train.progress import StepResult
from train.progress_display import ProgressDisplay
from train.stages import tokenizer_folder


class Callback:
    def on_train_start(self, trainer) -> None: ...
    def on_step(self, trainer, result: StepResult) -> None: ...
    def on_train_end(self, trainer) -> None: ...
    def close(self) -> None: ...


class LogMetrics(Callback):
    """Every `log_every` steps and at the last: the console line, metrics.jsonl and W&B (rank 0); the
    progress display every step (train/progress_display.py); at the end, loss.png (train/plots.py)."""

    def __init__(self, trainer, logger: MetricsLogger):
        config = trainer.config
        self.logger, self.max_steps = logger, config.trainer.max_steps
        self.display = ProgressDisplay(config.stage, self.max_steps, config.logging.progress, trainer.world.is_main)
        summary = summarize(config.model, context=config.data.seq_len, dtype=config.parallel.param_dtype)
        peak = peak_tflops(config.logging, trainer.world.device, DTYPES[config.parallel.param_dtype])
        self.throughput = Throughput(summary.flops_per_token, peak, trainer.world.size)

    def on_train_start(self, trainer) -> None:
        cfg = trainer.config
        trainer.say(f"training {cfg.stage} in {trainer.run_dir}: {trainer.dims.describe()} on "
                    f"{trainer.world.device.type}, {trainer.plan.describe()}, "
                    f"{cfg.trainer.global_batch_size} samples of up to {cfg.data.seq_len} tokens per step")
        self.throughput.reset()
        reset_memory_stats(trainer.world.device)
        self.display.start(trainer.progress.step)

    def on_step(self, trainer, result: StepResult) -> None:
        self.throughput.add(result.tokens)  # a dropped step's time and tokens count too
        self.display.advance(trainer.progress.step)
        if result.figures is None:  # not a reporting step (trainer.reports), or dropped
            return
        step = trainer.progress.step
        rate, mfu = self.throughput.read()
        record = {"step": step, **result.figures, "tokens_per_s": rate, "mfu": mfu, "tokens_seen": trainer.progress.tokens_seen,
                  **memory_stats(trainer.world.device)}
        self.logger.log(record)
        self.display.report(format_line(record, self.max_steps), step, record)
        reset_memory_stats(trainer.world.device)  # each record holds its interval's peaks

    def on_train_end(self, trainer) -> None:
        self.display.close()
        if trainer.world.is_main:
            try:
                plot_run(trainer.run_dir)
            except (OSError, ValueError) as error:  # e.g. stopped before the first report: nothing to draw
                trainer.say(f"no loss plot: {error}")

    def close(self) -> None:
        self.display.close()


class Validate(Callback):
    """Every `val_every` steps and at the last: the held-out loss and statistics, logged."""

    def __init__(self, trainer, logger: MetricsLogger):
        self.logger, self.every, self.max_steps = logger, trainer.config.trainer.val_every, trainer.config.trainer.max_steps

    def on_step(self, trainer, result: StepResult) -> None:
        step = trainer.progress.step
        if not result.taken or not ((self.every and step % self.every == 0) or step == self.max_steps):
            return
        evaluation = trainer.validate()
        trainer.progress.last.update(evaluation)
        self.logger.log({"step": step, **evaluation})
        trainer.say(f"step {step:>5}/{self.max_steps} | " + " | ".join(
            f"{key.replace('_', ' ')} {value:.4f}" for key, value in evaluation.items()))


class DownstreamEval(Callback):
    """Every `downstream.every` steps and at the last: multiple-choice accuracy on `downstream.path`
    (train/downstream.py), each rank scoring a share of the questions, logged as downstream/acc and acc_norm."""

    def __init__(self, trainer, logger: MetricsLogger):
        config = trainer.config
        dims = trainer.dims
        if dims.tp > 1 or dims.cp > 1 or dims.pp > 1:  # scoring splits questions by rank and reads whole logits
            raise ValueError(f"downstream.path is not supported with parallel.tp={dims.tp} parallel.cp={dims.cp} "
                             f"parallel.pp={dims.pp}; unset downstream.path or run with tp=cp=pp=1")
        self.logger, self.settings, self.max_steps = logger, config.downstream, config.trainer.max_steps
        self.questions = read_questions(config.downstream.path)  # a bad file fails now, not at step `every`
        self.tokenizer = Tokenizer.from_file(str(tokenizer_folder(config) / "tokenizer.json"))

    def on_step(self, trainer, result: StepResult) -> None:
        step, every = trainer.progress.step, self.settings.every
        if not result.taken or not ((every and step % every == 0) or step == self.max_steps):
            return
        with trainer.precision():
            sums = score_share(trainer.model, self.tokenizer, self.questions, trainer.world.rank, trainer.world.size,
                               self.settings.batch_size, trainer.config.trainer.loss_chunk_tokens)
        trainer.model.reset_expert_loads()  # scoring's routing does not count towards balancing
        scores = {f"downstream/{key}": value for key, value in accuracies(all_reduce_sum(sums)).items()}
        self.logger.log({"step": step, **scores})
        trainer.say(f"step {step:>5}/{self.max_steps} | {len(self.questions)} questions of {self.settings.path}: "
                    + " | ".join(f"{key.split('/')[1]} {value:.4f}" for key, value in scores.items()))


class StopRequests(Callback):
    """SIGTERM/SIGUSR1 to any worker, or the run folder's stop file (what a SLURM batch script writes at
    the time-limit warning, since torchrun passes no signals on), ask the run to stop after this step."""

    def __init__(self, trainer):
        self.stop_file, self.signalled = trainer.run_dir / run_folder.STOP, False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda signum, frame: self.request(trainer, signum))

    def request(self, trainer, signum) -> None:
        self.signalled = True
        trainer.say(f"received {signal.Signals(signum).name}: finishing this step, then checkpointing and exiting")

    def on_step(self, trainer, result: StepResult) -> None:
        """Whether any rank got a signal, or rank 0 found the stop file (one stat per step, on one rank)."""
        asked = np.array([float(self.signalled or (trainer.world.is_main and self.stop_file.exists()))])
        dist.all_reduce(torch.from_numpy(asked), op=dist.ReduceOp.MAX)  # a host value, through the CPU backend
        if asked[0] and trainer.world.is_main and self.stop_file.exists():
            trainer.say(f"found {self.stop_file}: checkpointing this step and exiting")
            self.stop_file.unlink()
        trainer.stop_requested = bool(asked[0])


class Checkpoints(Callback):
    """A step checkpoint every `checkpoint.every` steps, on a stop request, and at the end."""

    def __init__(self, trainer):
        self.every = trainer.config.checkpoint.every

    def on_step(self, trainer, result: StepResult) -> None:
        if result.taken and self.every and trainer.progress.step % self.every == 0:
            trainer.checkpointer.save(trainer.progress.step)
        if trainer.stop_requested:
            trainer.checkpointer.save(trainer.progress.step)
            trainer.say(f"stopped at step {trainer.progress.step} on request; checkpoint saved")

    def on_train_end(self, trainer) -> None:
        if trainer.finished:
            trainer.checkpointer.save(trainer.progress.step)


class FinalModel(Callback):
    """At the end: the final weights gathered on rank 0 as the run's model folder (model.yaml +
    model.safetensors + the tokenizer): what `load_model`, `train.export` and the next stage's
    `init.weights` read. Its weights file, written last, marks the run as finished."""

    def on_train_end(self, trainer) -> None:
        if not trainer.finished:
            return
        if trainer.dims.pp > 1:  # each stage's weights gathered, then sent to rank 0
            full = gathered_stages(trainer.model, trainer.dims.pp_mesh.get_group())
        else:
            full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            full.update(gathered_experts(trainer.model, trainer.dims, trainer.world.is_main))
        if trainer.world.is_main:
            folder = save_model(model_from_state_dict(trainer.config.model, full), trainer.run_dir / run_folder.MODEL)
            source = tokenizer_folder(trainer.config)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                if (source / name).is_file():
                    shutil.copy(source / name, folder / name)
        dist.barrier()


class Summary(Callback):
    """The closing lines: where the run stopped, its last figures, and where its outputs are."""

    def on_train_end(self, trainer) -> None:
        trainer.checkpointer.wait()
        last, step = trainer.progress.last, trainer.progress.step
        final = trainer.checkpointer.root / f"step_{step:08d}"
        scores = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k in ("loss", "val_loss", "val_reward_accuracy"))
        trainer.say(f"{trainer.config.stage} finished at step {step}{': ' + scores if scores else ''}\n"
                    f"  checkpoint {final.resolve()}\n  model      {(trainer.run_dir / run_folder.MODEL).resolve()}\n"
                    f"  metrics    {(trainer.run_dir / run_folder.METRICS).resolve()}\n"
                    f"  plot       {(trainer.run_dir / run_folder.LOSS_PLOT).resolve()}")


class CloseLogger(Callback):
    def __init__(self, logger: MetricsLogger):
        self.logger = logger

    def close(self) -> None:
        self.logger.close()


def default_callbacks(trainer) -> list:
    """The callbacks every run has (see the module docstring). Writes config.yaml and opens the metrics
    file and W&B run first (rank 0)."""
    config = trainer.config
    if trainer.world.is_main:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        (trainer.run_dir / run_folder.CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    logger = MetricsLogger(trainer.run_dir, config.logging, resolved, trainer.progress.step, trainer.world.is_main,
                           config.stage)
    downstream = [DownstreamEval(trainer, logger)] if config.downstream.path else []
    return [LogMetrics(trainer, logger), Validate(trainer, logger), *downstream, StopRequests(trainer),
            Checkpoints(trainer), FinalModel(), Summary(), CloseLogger(logger)]
