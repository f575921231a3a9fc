"""Post-training throughput: this project's SFT and DPO steps vs TRL 1.16's SFTTrainer and DPOTrainer.

    python bench/post_training.py [--steps 10] [--warmup 2] [--rows 1000] [--repeats 2] [--data outputs/data/stdlib] [--quick]

Both sides train the same model from the same initial weights: bench/pretrain_throughput.py's Llama
(384x6, vocab 8192), a seeded random init written once as this project's model folder and exported from
it as a Hugging Face folder for TRL, with the prepared corpus's tokenizer and chat template. Same data:
the first --rows rows of Alpaca (SFT) and of HH-RLHF harmless-base (DPO) from ../shared/data, our split's
training part on both sides (TRL's SFT gets our tokenized conversations, so both train on the same
tokens; its DPO tokenizes the same pairs with the same chat template). Batch 8, max length 256, bf16
(ours: bf16 compute, fp32 master weights; TRL: bf16=True, autocast), activation checkpointing off on
both sides, AdamW. The rows:

    SFT packed     ours: best-fit-decreasing windows, document masking; TRL: packing=True (its BFD, padding-free)
    SFT padded     one conversation per row; ours: to the batch's longest row rounded up to
                   data.pad_to_multiple_of (16); TRL: to the batch's longest row
    DPO live ref   the frozen reference model runs on every batch (TRL: ref_model passed explicitly); ours
                   packs each batch's 16 sequences into rows of 256 (data.pack, the default), TRL pads them
                   to the batch's longest (its padding_free is unavailable in 1.16: it falls back to padding)
    DPO precomp.   the same with ours: dpo.precompute_reference=true; TRL: precompute_ref_log_probs=True (the
                   time to precompute is printed apart, not in the rates)

Rates are counted from the batches each side trains on: non-padding tokens (each DPO prompt counts
twice, once per response, on both sides) and examples (conversations, or pairs) over the --steps timed
steps after --warmup (total over total time, data loading included). Every run has a process of its
own on --device (with --quick, each side one for all rows); the two sides alternate (TRL first, then
ours first in the next repeat) and the faster of each side's --repeats runs counts, since a shared
machine only ever slows a run down. Prints a table; asserts nothing.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import synchronize, trainer_numerics  # noqa: E402
from bench.pretrain_throughput import BATCH, SEQ, our_config  # noqa: E402
from data.chat.preferences import read_pairs  # noqa: E402
from data.chat.rows import ChatSource, Skipped  # noqa: E402
from data.chat.sft import load_sft  # noqa: E402
from data.chat.template import IGNORE  # noqa: E402
from data.split import split_held_out  # noqa: E402
from train import reference  # noqa: E402
from train.model.folder import save_model  # noqa: E402
from train.model.hf import export_hf  # noqa: E402
from train.model.transformer import Transformer  # noqa: E402
from train.trainer import Trainer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROWS = ("SFT packed", "SFT padded", "DPO live ref", "DPO precomputed ref")
SIDES = ("TRL", "llm-blocks")
DATA_FILES = {"SFT": "alpaca_5000.json", "DPO": "hh_rlhf_harmless_base_test.jsonl.gz"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class Measured:
    tokens: int = 0  # non-padding tokens of the timed steps
    positions: int = 0  # all positions, padding included
    examples: int = 0
    seconds: float = 0.0
    precompute_s: float = 0.0  # the reference's log-probs before training (precomputed rows)

    def rate(self, what: int) -> float:
        return what / self.seconds


class Timed:
    """Records how long each call of `owner.name` takes, while in effect (the precompute of either side)."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.seconds = owner, name, 0.0

    @contextlib.contextmanager
    def active(self):
        original = getattr(self.owner, self.name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        setattr(self.owner, self.name, timed)
        try:
            yield self
        finally:
            setattr(self.owner, self.name, original)


# --- this project -----------------------------------------------------------------------------------


def project_config(row: str, init: Path, data_file: Path, rows: int, steps: int, run_dir: Path, device: torch.device):
    config = our_config(str(init), "bf16", run_dir, device)
    config.stage = "dpo" if row.startswith("DPO") else "sft"
    config.init.weights = str(init)
    config.data.chat = ChatSource(kind="local", paths=[str(data_file)], max_rows=rows)
    config.data.pack, config.data.document_masking = row != "SFT padded", True
    config.dpo.precompute_reference = row == "DPO precomputed ref"
    config.trainer.max_steps, config.trainer.val_every = steps, 0
    return config


def project(config, pad_id: int, warmup: int, device: torch.device) -> Measured:
    timer = Timed(reference, "compute")
    with timer.active():
        trainer = Trainer(config)
    measured = Measured(precompute_s=timer.seconds)
    try:
        trainer.model.train()
        last = time.perf_counter()
        for step in range(1, config.trainer.max_steps + 1):
            batches = trainer.stream.next_step(trainer.plan.accumulation, step)
            trainer.train_step(batches, report=False)
            synchronize(device)
            now = time.perf_counter()
            if step > warmup:
                measured.seconds += now - last
                for batch in batches:
                    real = batch["inputs"] != pad_id
                    measured.tokens += int(real.sum())
                    measured.positions += real.numel()
                    if config.stage == "dpo":
                        measured.examples += batch["count"]
                    elif "doc_ids" in batch and config.data.pack:  # conversations: starts of non-padding documents
                        doc_BT = batch["doc_ids"]
                        measured.examples += int(real[:, 0].sum() + ((doc_BT[:, 1:] != doc_BT[:, :-1]) & real[:, 1:]).sum())
                    else:
                        measured.examples += len(batch["inputs"])
            trainer.progress.step, last = step, time.perf_counter()
    finally:
        trainer.close()
    return measured


# --- TRL --------------------------------------------------------------------------------------------


class Counting:
    """TRL's data collator, noting what each batch holds (in call order: batch k is trained on at step k)."""

    def __init__(self, collate, pairs: bool):
        self.collate, self.pairs, self.batches = collate, pairs, []

    def __call__(self, examples):
        batch = self.collate(examples)
        ids = batch["input_ids"]
        if "attention_mask" in batch:  # padded rows ([2B, L] for pairs: chosen, then rejected)
            tokens, examples_in = int(batch["attention_mask"].sum()), len(ids) // (2 if self.pairs else 1)
        else:  # padding-free packing: one row of sequences, each starting at position 0
            tokens, examples_in = ids.numel(), int((batch["position_ids"] == 0).sum())
        self.batches.append((tokens, ids.numel(), examples_in))
        return batch


def trl_run(row: str, hf_dir: Path, dataset, steps: int, warmup: int, out: Path, device: torch.device) -> Measured:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    transformers.logging.set_verbosity_error()
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    times = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            times.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    def load():
        return AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa").to(device)

    common = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, max_length=SEQ,
                  bf16=True, gradient_checkpointing=False, learning_rate=1e-4, lr_scheduler_type="constant",
                  logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
                  use_cpu=device.type == "cpu", dataloader_num_workers=0)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    timer = None
    if row.startswith("SFT"):
        trainer = SFTTrainer(model=load(), args=SFTConfig(packing=row == "SFT packed", **common), train_dataset=dataset,
                             processing_class=tokenizer)
    else:
        precompute = row == "DPO precomputed ref"
        timer = Timed(DPOTrainer, "_precompute_ref_logps")
        with timer.active():
            trainer = DPOTrainer(model=load(), ref_model=None if precompute else load(), train_dataset=dataset,
                                 args=DPOConfig(beta=0.1, precompute_ref_log_probs=precompute, **common),
                                 processing_class=tokenizer)
    counting = Counting(trainer.data_collator, pairs=row.startswith("DPO"))
    trainer.data_collator = counting
    trainer.add_callback(StepTimes())
    trainer.train()
    measured = Measured(seconds=times[-1] - times[warmup], precompute_s=timer.seconds if timer else 0.0)
    for tokens, positions, examples in counting.batches[warmup:steps]:
        measured.tokens, measured.positions, measured.examples = (
            measured.tokens + tokens, measured.positions + positions, measured.examples + examples)
    return measured


# --- the same data for both --------------------------------------------------------------------------


def trl_sft_dataset(config, tokenizer):
    """Our training conversations, tokenized by us (one per unpacked window), as TRL's pre-tokenized rows."""
    import datasets

    pad_id = tokenizer.token_to_id("<|pad|>") or 0
    sft = load_sft(config.data.chat, tokenizer, SEQ, pad_id, pack=False, val_fraction=config.data.chat_val_fraction)
    return datasets.Dataset.from_list([
        {"input_ids": w.tokens[: w.length].tolist(), "assistant_masks": (w.labels[: w.length] != IGNORE).astype(int).tolist()}
        for w in sft.train])


def trl_dpo_dataset(config):
    """Our training pairs (the same rows and split), as TRL's conversational preference rows."""
    import datasets

    pairs, _ = split_held_out(list(read_pairs(config.data.chat, Skipped())), config.data.chat_val_fraction)
    return datasets.Dataset.from_list([
        {"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs])


def child(args, row: str, side: str, work: Path, device: torch.device) -> Measured:
    """One run of one side on one row, in a fresh run folder (nothing of an earlier run is read again, such
    as its precomputed reference log-probs)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(work / "init" / "tokenizer.json"))
    data_file = Path(args.shared) / DATA_FILES[row[:3]]
    steps = args.warmup + args.steps
    run_dir = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=work))
    config = project_config(row, work / "init", data_file, args.rows, steps, run_dir, device)
    if side == "llm-blocks":
        return project(config, tokenizer.token_to_id("<|pad|>") or 0, args.warmup, device)
    dataset = trl_sft_dataset(config, tokenizer) if row.startswith("SFT") else trl_dpo_dataset(config)
    return trl_run(row, work / "hf", dataset, steps, args.warmup, run_dir, device)


def run_child(argv, rows, side: str, work: Path) -> list:
    """Runs of one side, in a process of their own: no state of the other side's carries over (our process
    group would make transformers wrap TRL's model in DDP; kernel caches; memory)."""
    command = [sys.executable, __file__, *argv, "--child", side, "--work", str(work), "--row", *rows]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_DATASETS_OFFLINE="1"))
    if result.returncode != 0:
        sys.exit(f"{side} on {rows} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return [Measured(**m) for m in json.loads(result.stdout.strip().splitlines()[-1])]


def prepare_models(data: Path, work: Path) -> None:
    """The initial weights, as our model folder (with the tokenizer) and exported as a Hugging Face folder."""
    config = our_config(str(data), "bf16", work / "probe", torch.device("cpu"))
    torch.manual_seed(0)
    model = Transformer(config.model)
    save_model(model, work / "init")
    for name in TOKENIZER_FILES:
        shutil.copy(data / name, work / "init" / name)
    export_hf(model, work / "hf", tokenizer_dir=data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rows", type=int, default=1000, help="rows read from each data set")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side and row, interleaved; the best counts")
    parser.add_argument("--data", default="outputs/data/stdlib", help="a folder prepared by `python -m data` (its tokenizer)")
    parser.add_argument("--shared", default=str(SHARED), help="the folder holding alpaca_5000.json and the HH-RLHF file")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 64 rows, 1 warm-up and 2 timed steps, once, one process per side")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)  # one run (internal)
    parser.add_argument("--row", choices=ROWS, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.warmup, args.steps, args.repeats = 64, 1, 2, 1
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    trainer_numerics(device)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.child:
        print(json.dumps([vars(child(args, row, args.child, Path(args.work), device)) for row in args.row]))
        return
    if not all(Path(args.data, name).is_file() for name in TOKENIZER_FILES):
        sys.exit(f"{args.data}: no tokenizer; run `python -m data` first")
    if not all((Path(args.shared) / name).is_file() for name in DATA_FILES.values()):
        sys.exit(f"{args.shared}: needs {' and '.join(DATA_FILES.values())} (../shared/data)")
    argv = [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--rows={args.rows}", f"--shared={args.shared}",
            f"--device={args.device}"]
    best = {}  # (row, side) -> the fastest run
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        prepare_models(Path(args.data), work)
        # --quick: one process per side for all rows; else one per run, the sides alternating
        runs = [(ROWS, side) for side in SIDES] if args.quick else [
            ([row], side) for repeat in range(args.repeats) for row in ROWS for side in SIDES[:: 1 - 2 * (repeat % 2)]]
        for rows, side in runs:
            for row, measured in zip(rows, run_child(argv, rows, side, work)):
                if (row, side) not in best or measured.rate(measured.tokens) > best[row, side].rate(best[row, side].tokens):
                    best[row, side] = measured

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"Llama 384x6 (15.7M), batch {BATCH}, max length {SEQ}, bf16; {where}; best of {args.repeats} run(s) "
          f"of {args.steps} timed steps after {args.warmup} warm-up; first {args.rows} rows; TRL 1.16 vs llm-blocks\n")
    print("| row | TRL tokens/s | llm-blocks tokens/s | ratio | TRL examples/s | llm-blocks examples/s | ratio "
          "| padding TRL / ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in ROWS:
        peer, mine = best[row, "TRL"], best[row, "llm-blocks"]
        print(f"| {row} | {peer.rate(peer.tokens):,.0f} | {mine.rate(mine.tokens):,.0f} | "
              f"{mine.rate(mine.tokens) / peer.rate(peer.tokens):.2f}x | {peer.rate(peer.examples):.2f} | "
              f"{mine.rate(mine.examples):.2f} | {mine.rate(mine.examples) / peer.rate(peer.examples):.2f}x | "
              f"{1 - peer.tokens / peer.positions:.0%} / {1 - mine.tokens / mine.positions:.0%} |")
    peer, mine = best["DPO precomputed ref", "TRL"], best["DPO precomputed ref", "llm-blocks"]
    print(f"\nreference log-probs precomputed before training (not in the rates): TRL {peer.precompute_s:.1f} s, "
          f"llm-blocks {mine.precompute_s:.1f} s")


if __name__ == "__main__":
    main()
