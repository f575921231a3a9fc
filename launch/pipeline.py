"""The whole pipeline in one command: data -> pre-training -> mid-training (YaRN) -> SFT -> DPO.

    python -m launch.pipeline [--nproc 2] [--out outputs] [STAGE.KEY=VALUE ...]

Each training stage runs on `--nproc` local processes through elastic torchrun (launch/local.py) and
starts from the previous stage's `model/` folder. A finished stage (its `model/` exists) is skipped on
re-run; an interrupted one resumes from its latest checkpoint. Overrides go to one stage by prefix:
`pretrain.trainer.max_steps=500`, `sft.optim.lr=1e-4`, `data.tokenizer.vocab_size=4096`; `train.` goes
to every training stage (e.g. `train.logging.wandb.mode=offline`); the stages' W&B runs share one
group per pipeline (OUT/wandb_group). Ends with a summary (also written to OUT/pipeline_summary.md) that
shows each stage's effect: pre-training's falling loss and validation perplexity; passkey retrieval at 1x,
2x and 4x the pre-training context before and after YaRN mid-training (`--passkey-documents N` mixes N
synthetic passkey documents into the mid-training data); the answer to one question before
SFT, after SFT and after DPO (and whether it ended its turn: the chat format); DPO's reward accuracy on
held-out pairs; each stage's loss.png; where the checkpoints and the Hugging Face export are.

    python -m launch.pipeline                                  # the demo: `make demo`
    python -m launch.pipeline --nproc 4 pretrain.trainer.max_steps=1000 train.logging.wandb.mode=offline
    python -m launch.pipeline --out outputs/longer midtrain.trainer.max_steps=300 sft.trainer.max_steps=1200
"""

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from omegaconf import OmegaConf

from common.atomic import create_once
from common.processes import tee
from data.chat import stdlib as stdlib_chat
from data.chat.template import END_OF_TURN
from launch.local import torchrun_command
from train.run_folder import LOSS_PLOT, is_finished

TRAIN_STAGES = ("pretrain", "midtrain", "sft", "dpo")
PREFIXES = ("data", "train") + TRAIN_STAGES
CHAT_PROMPT = "What does `json.dumps` do?"
CHAT_TOKENS = 48  # new tokens of a chat answer
PASSKEY_TRIALS = 5  # keys per (length, depth): 15 per length
OVERRIDES_HELP = """overrides (PREFIX.KEY=VALUE, routed by prefix):
  data.KEY=VALUE      the pre-training data's `python -m data` (python -m data --help)
  train.KEY=VALUE     every training stage's `python -m train` (python -m train --help)
  pretrain.KEY=VALUE, midtrain.KEY=VALUE, sft.KEY=VALUE, dpo.KEY=VALUE
                      one stage's `python -m train` (after train.); each stage starts from configs/stage/<stage>.yaml"""


def split_overrides(items: List[str]) -> Dict[str, List[str]]:
    routed: Dict[str, List[str]] = {prefix: [] for prefix in PREFIXES}
    for item in items:
        prefix, _, rest = item.partition(".")
        if prefix not in routed or "=" not in rest:
            raise SystemExit(f"error: override {item!r} must start with one of {', '.join(p + '.' for p in PREFIXES)}")
        routed[prefix].append(rest)
    return routed


def data_commands(python: str, data_dir: Path, overrides: List[str], passkey_documents: int = 0) -> List[List[str]]:
    """The pre-training data, then long documents for mid-training: whole standard-library modules mixed
    with the documentation topics (and, with passkey_documents, that many synthetic passkey documents of
    up to ~1,020 tokens, data/passkey.py: a synthetic retrieval share), with the pre-training tokenizer."""
    passkey = f", {{kind: passkey, max_documents: {passkey_documents}}}" if passkey_documents else ""
    return [
        [python, "-m", "data", f"out_dir={data_dir}", "name=stdlib", "progress=false", *overrides],
        [python, "-m", "data", f"out_dir={data_dir}", "name=stdlib_long", "progress=false", "source.include_topics=false",
         f"mixture=[{{kind: stdlib, include_modules: false}}{passkey}]", f"tokenizer.path={data_dir / 'stdlib'}"],
    ]


def stage_overrides(stage: str, out: Path, routed: Dict[str, List[str]]) -> List[str]:
    """A training stage's `python -m train` overrides: its data, its start model (the previous stage's
    model/ folder), the pipeline's W&B group, then the user's `train.` and `<stage>.` overrides."""
    data_dir, runs = out / "data", out / "runs"
    previous = {"midtrain": "pretrain", "sft": "midtrain", "dpo": "sft"}
    return [
        f"stage={stage}", f"out_dir={runs}",
        *([f"data.path={data_dir / 'stdlib'}"] if stage == "pretrain" else []),
        *([f"data.path={data_dir / 'stdlib_long'}"] if stage == "midtrain" else []),
        *([f"init.weights={runs / previous[stage] / 'model'}"] if stage in previous else []),
        f"logging.wandb.group={wandb_group(out)}", *routed["train"], *routed[stage],
    ]


def wandb_group(out: Path) -> str:
    """One W&B group per pipeline (per output folder), named once and kept in OUT/wandb_group, so
    re-runs, resumed stages and SLURM jobs of the same pipeline land in the same group."""
    return create_once(out / "wandb_group", lambda: f"pipeline-{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def run(command: List[str], log: Path) -> str:
    """Run a stage, streaming its output to the console and to its log file; stop the pipeline if it fails."""
    print(f"$ {' '.join(command)}", flush=True)
    returncode, output = tee(command, log)
    if returncode != 0:
        raise SystemExit(f"error: stage failed with exit status {returncode}; see {log}")
    return output


def final_metrics(run_dir: Path) -> Dict[str, float]:
    last: Dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        last.update({k: v for k, v in json.loads(line).items() if isinstance(v, (int, float))})
    return last


def first_loss(run_dir: Path) -> float:
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            return record["loss"]
    return float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=OVERRIDES_HELP)
    parser.add_argument("--nproc", type=int, default=2, help="processes per training stage")
    parser.add_argument("--out", default="outputs", help="folder for data/, runs/, hf/ and the summary")
    parser.add_argument("--passkey-documents", type=int, default=0,
                        help="synthetic passkey documents mixed into the mid-training data (source.kind=passkey)")
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(rest)
    out = Path(args.out).resolve()
    data_dir, runs, logs = out / "data", out / "runs", out / "logs"
    python = sys.executable
    started = time.time()

    commands = data_commands(python, data_dir, overrides["data"], args.passkey_documents)
    for command, log in zip(commands, ("data.log", "data_long.log")):
        run(command, logs / log)

    passkey: Dict[str, Dict[str, float]] = {}
    chats: Dict[str, Tuple[str, bool]] = {}
    for stage in TRAIN_STAGES:
        run_dir = runs / stage
        if stage == "sft":
            chats["before SFT"] = chat(runs / "midtrain" / "model", logs)
        if is_finished(run_dir):
            print(f"== {stage}: finished earlier, skipped ({run_dir / 'model'})", flush=True)
        else:
            print(f"== {stage}", flush=True)
            command = torchrun_command(args.nproc, 3, "train", stage_overrides(stage, out, overrides))
            run(command, logs / f"{stage}.log")
        if stage in ("pretrain", "midtrain"):
            passkey["before YaRN" if stage == "pretrain" else "after YaRN"] = passkey_scores(
                run_dir / "model", pretraining_context(runs), logs)
    chats["after SFT"] = chat(runs / "sft" / "model", logs)
    chats["after DPO"] = chat(runs / "dpo" / "model", logs)
    run([python, "-m", "train.export", f"model_dir={runs / 'dpo' / 'model'}", f"out={out / 'hf'}"], logs / "export.log")

    summary = render_summary(runs, passkey, chats, out, time.time() - started, args.passkey_documents)
    (out / "pipeline_summary.md").write_text(summary)
    print("\n" + summary)
    return 0


def pretraining_context(runs: Path) -> int:
    return OmegaConf.load(runs / "pretrain" / "config.yaml").data.seq_len


def passkey_scores(model_dir: Path, context: int, logs: Path) -> Dict[str, float]:
    """Passkey accuracy at 1x, 2x and 4x the pre-training context."""
    output = run([sys.executable, "-m", "train.passkey", f"model_dir={model_dir}", f"context={context}",
                  f"trials={PASSKEY_TRIALS}"], logs / "passkey.log")
    return {k: float(v) for k, v in re.findall(r"(\d+x) ([\d.]+)", output.strip().splitlines()[-1])}


def chat(model_dir: Path, logs: Path) -> Tuple[str, bool]:
    """The model's answer to CHAT_PROMPT, and whether it ended its turn (the chat format) within the tokens."""
    output = run([sys.executable, "-m", "train.talk", f"model_dir={model_dir}", f"prompt='{CHAT_PROMPT}'",
                  f"max_new_tokens={CHAT_TOKENS}"], logs / "chat.log")
    answer = output.partition("\nassistant: ")[2]
    answer, unended, _ = answer.partition(f"\n(no {END_OF_TURN}")
    return answer.strip(), not unended


def reference_answer() -> str:
    """What the embedded SFT data answers CHAT_PROMPT with: the first paragraph of json.dumps' docstring."""
    return next((e.answer for e in stdlib_chat.entries() if e.name == CHAT_PROMPT.split("`")[1]), "")


def one_line(text: str, limit: int = 160) -> str:
    text = " ⏎ ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return f'"{text[:limit]}{"..." if len(text) > limit else ""}"' if text else "(nothing)"


def render_summary(runs: Path, passkey, chats, out: Path, seconds: float, passkey_documents: int) -> str:
    lines = [f"# Pipeline summary ({seconds / 60:.1f} min)", "",
             "| stage | first train loss | final train loss | final val loss | val perplexity | steps | curves |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for stage in TRAIN_STAGES:
        m = final_metrics(runs / stage)
        val = m.get("val_loss", float("nan"))
        perplexity = f"{math.exp(val):.1f}" if stage == "pretrain" else "-"  # the others' validation data differ
        lines.append(f"| {stage} | {first_loss(runs / stage):.4f} | {m.get('loss', float('nan')):.4f} | {val:.4f} | "
                     f"{perplexity} | {int(m.get('step', 0))} | [loss.png]({(runs / stage / LOSS_PLOT).relative_to(out)}) |")
    context = pretraining_context(runs)
    multiples = list(next(iter(passkey.values()), {}))
    lines += ["", f"Long context: passkey retrieval ({PASSKEY_TRIALS * 3} keys per length, each hidden at depths 0.1, 0.5 "
                  f"and 0.9 of filler text; exact 5-digit answers), at multiples of the pre-training context of {context} "
                  "tokens. Mid-training switches RoPE to YaRN and continues at 4x the length"
                  + (f", with {passkey_documents:,} synthetic passkey documents (other keys) in its data." if passkey_documents
                     else " (without synthetic passkey documents: --passkey-documents N mixes them in)."), "",
              "| passkey | " + " | ".join(multiples) + " |", "|---|" + "---:|" * len(multiples)]
    for label, scores in passkey.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in scores.values()) + " |")
    lines += ["", f"Chat, the prompt {CHAT_PROMPT!r} (the SFT data's answer: {one_line(reference_answer())}):"]
    for label, (answer, ended) in chats.items():
        form = "ended its turn: the chat format" if ended else f"no end of turn within {CHAT_TOKENS} tokens: " + (
            "it continues the text, as a model that never saw the chat format does" if label == "before SFT" else
            "not the chat format")
        blank = answer.startswith(("(whitespace only:", "(nothing)"))  # how train.talk shows a blank answer
        lines.append(f"- {label}: {answer[:120] if blank else one_line(answer)} ({form})")
    dpo = final_metrics(runs / "dpo")
    lines += ["", f"DPO on held-out pairs: reward accuracy {dpo.get('val_reward_accuracy', float('nan')):.3f}, "
                  f"margin {dpo.get('val_reward_margin', float('nan')):.3f}", ""]
    lines += ["Checkpoints: " + ", ".join(str(runs / s / "model") for s in TRAIN_STAGES),
              f"Hugging Face export: {out / 'hf'}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
