"""SFT and DPO through the trainer: they resume after a killed rank like pre-training, bad rows are reported with
their counts (2 gloo ranks, the tiny Llama, a few steps), and a Hugging Face folder with its own chat template
post-trains by overrides only, with TRL's masks and a tokenized cache that a restart reuses."""

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from data.chat.chat_format import chat_format
from data.chat.preferences import PairArrays, load_pairs
from data.chat.rows import ChatSource
from data.chat.sft import SFTWindows
from data.chat.template import IGNORE
from data.split import split_held_out
from data.reader import EpochOrder
from train.dpo_loss import dpo_loss
from train.model import load_model
from tests.chat_helpers import save_hf_tokenizer, template, trl_dpo, trl_sft
from tests.train_helpers import losses, metrics, run_training
from tests.shared_data import SHARED_DATA as SHARED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def start_model(prepared_data, tmp_path_factory):
    """A briefly pre-trained model folder (weights + tokenizer) to post-train from."""
    run_dir = tmp_path_factory.mktemp("base") / "pretrain"
    run_training(run_dir, prepared_data, "trainer.max_steps=2")
    return str(run_dir / "model")


@pytest.mark.parametrize("stage", [pytest.param("midtrain", marks=pytest.mark.heavy), "sft", pytest.param("dpo", marks=pytest.mark.heavy)])
def test_stage_resumes_after_a_killed_rank(prepared_data, start_model, tmp_path, stage):
    common = [f"stage={stage}", f"init.weights={start_model}", "trainer.max_steps=6", "checkpoint.every=3",
              "trainer.deterministic=true", "trainer.val_every=3", "trainer.val_samples=8"]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    run_training(clean, prepared_data, *common, nproc=2)
    # DPO's crashed run precomputes the reference's log-probs: once, read again after the restart, and
    # its losses are those of the clean run's live reference
    precompute = ["dpo.precompute_reference=true"] if stage == "dpo" else []
    result = run_training(crashed, prepared_data, *common, *precompute, nproc=2, max_restarts=3,
                          fault="die:rank=0:step=5")
    assert "injected crash before step 5" in result.stdout and "step_00000003" in result.stdout
    assert losses(crashed) == losses(clean) and sorted(losses(clean)) == list(range(1, 7))
    if stage == "dpo":
        assert result.stdout.count("reference log-probs: computed for") == 1
        assert result.stdout.index("reference log-probs: read from") > result.stdout.index("injected crash")
        # the held-out rewards use the precomputed held-out values; here they are recomputed from full logits
        final = [r for r in metrics(crashed) if "val_reward_accuracy" in r][-1]
        expected = held_out_rewards(crashed / "model", start_model, crashed)
        assert final["step"] == 6 and final["val_reward_accuracy"] == expected["accuracy"]
        assert final["val_reward_margin"] == pytest.approx(expected["margin"], abs=1e-4)


def sequence_logp(model, ids, labels) -> float:
    """Sum of log p(label) over the labelled positions, from the full logits (no chunking, no fusing)."""
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].double(), dim=-1)
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE
    return float(log_probs[keep].gather(1, targets[keep][:, None]).sum())


def held_out_rewards(policy_dir, reference_dir, run_dir) -> dict:
    """DPO's held-out reward accuracy and margin recomputed from the saved models: the first
    trainer.val_samples held-out pairs, rewards beta * (log pi - log pi_ref) of each response."""
    config = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = Tokenizer.from_file(str(Path(reference_dir) / "tokenizer.json"))
    held_out = load_pairs(ChatSource(), tokenizer, config.data.seq_len, config.data.chat_val_fraction).val
    policy, reference = load_model(policy_dir).eval(), load_model(reference_dir).eval()
    margins = []
    for pair in held_out[: config.trainer.val_samples]:
        rewards = [config.dpo.beta * (sequence_logp(policy, ids, labels) - sequence_logp(reference, ids, labels))
                   for ids, labels in ((pair.chosen_ids, pair.chosen_labels), (pair.rejected_ids, pair.rejected_labels))]
        margins.append(rewards[0] - rewards[1])
    return {"accuracy": sum(m > 0 for m in margins) / len(margins), "margin": sum(margins) / len(margins)}


@pytest.mark.parametrize("loss_type", ["simpo", pytest.param("orpo", marks=pytest.mark.heavy)])
def test_reference_free_first_loss_equals_the_pairs_mean(prepared_data, start_model, tmp_path, loss_type):
    """Step 1 (the policy is still the start model) of SimPO and ORPO through the trainer, 4 micro-batches
    of 2 pairs: its loss is the mean over the step's 8 pairs of the per-pair loss from full logits."""
    run_dir = tmp_path / loss_type
    run_training(run_dir, prepared_data, "stage=dpo", f"init.weights={start_model}", "trainer.max_steps=1",
                 f"dpo.loss_type={loss_type}", "dpo.beta=2.0", "trainer.record_samples=true")
    config = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = Tokenizer.from_file(str(Path(start_model) / "tokenizer.json"))
    train = load_pairs(ChatSource(), tokenizer, config.data.seq_len, config.data.chat_val_fraction).train
    order = EpochOrder(len(train), config.data.seed, shuffle=True)
    indices = json.loads((run_dir / "samples" / "rank_0.jsonl").read_text().splitlines()[0])["indices"]
    model = load_model(start_model).eval()
    logps, tokens = [], []
    for pair in (train[order(i)] for i in indices):
        for ids, labels in ((pair.chosen_ids, pair.chosen_labels), (pair.rejected_ids, pair.rejected_labels)):
            logps.append(sequence_logp(model, ids, labels))
            tokens.append(sum(label != IGNORE for label in labels[1:]))
    logps, tokens = torch.tensor(logps, dtype=torch.float64).view(-1, 2), torch.tensor(tokens).view(-1, 2)
    expected = dpo_loss(logps[:, 0], logps[:, 1], beta=2.0, loss_type=loss_type, chosen_tokens_B=tokens[:, 0],
                        rejected_tokens_B=tokens[:, 1]).losses_B.mean().item()
    assert len(indices) == 8 and losses(run_dir)[1] == pytest.approx(expected, abs=1e-5)


def test_bad_rows_are_reported_with_counts(prepared_data, start_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(40)]
    rows.append({"messages": [{"role": "user", "content": "no answer here"}]})  # no assistant turn
    rows.append({"instruction": "x " * 2000, "input": "", "output": "too long a prompt"})  # prompt > seq_len
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    result = run_training(tmp_path / "run", prepared_data, "stage=sft", f"init.weights={start_model}",
                          "data.chat.kind=local", f"data.chat.paths=[{path}]", "trainer.max_steps=1")
    report = [line for line in result.stdout.splitlines() if line.startswith("data:")][0]
    assert "skipped 3" in report
    for reason in ("no assistant", "prompt longer than seq_len", "malformed JSON"):
        assert reason in report, report




@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real public data sets) is not on this machine")
@pytest.mark.parametrize("stage,file", [("sft", "alpaca_5000.json"), ("dpo", "hh_rlhf_harmless_base_test.jsonl.gz")])
def test_real_public_formats_by_overrides_only(prepared_data, start_model, tmp_path, stage, file):
    result = run_training(tmp_path / stage, prepared_data, f"stage={stage}", f"init.weights={start_model}",
                          "data.chat.kind=local", f"data.chat.paths=[{SHARED / file}]", "trainer.max_steps=2")
    report = [line for line in result.stdout.splitlines() if line.startswith("data:")][0]
    assert ("4,998 conversations" in report) if stage == "sft" else ("preference pairs" in report)
    assert sorted(losses(tmp_path / stage)) == [1, 2]


# --- a Hugging Face folder with its own chat template ----------------------------------------------------------


def data_report(result) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("data:"))


def cache_of(report: str) -> Path:
    return Path(re.search(r"(?:tokenized into|reused) (\S+?)(?:;|$)", report).group(1))


def hf_chat_model(folder: Path, family: str, chat_template, model: str, **tokens) -> Path:
    """A tiny Qwen2 or Llama built from its config, saved with a tokenizer of `family` and `chat_template`."""
    import transformers

    save_hf_tokenizer(folder, family, chat_template, **tokens)
    vocab = len(transformers.PreTrainedTokenizerFast.from_pretrained(str(folder)))
    torch.manual_seed(0)
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    if model == "qwen2":
        transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape)).save_pretrained(folder)
    else:
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).save_pretrained(folder)
    return folder


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def system(text):
    return {"role": "system", "content": text}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


SFT_ROWS = [{"prompt": [system("Be brief."), user(f"What is {i} plus {i}?")] + ([assistant(f"{2 * i}."), user("Sure?")]
                                                                                 if i % 3 == 0 else []),
             "completion": [assistant(f"Yes, {2 * i}." if i % 3 == 0 else f"{2 * i}.")]} for i in range(48)]
PAIRS = [{"chosen": [system("Be brief."), user(f"What is {i} plus {i}?"), assistant(f"{2 * i}.")],
          "rejected": [system("Be brief."), user(f"What is {i} plus {i}?"), assistant(f"{2 * i + 1}, I think.")]}
         for i in range(48)]


@pytest.fixture(scope="module")
def qwen_sft(prepared_data, tmp_path_factory):
    """SFT of a tiny Qwen2 folder with Qwen2.5's own ChatML template, by overrides only (2 steps, checkpointed)."""
    root = tmp_path_factory.mktemp("qwen")
    folder = hf_chat_model(root / "hf", "qwen2_5", template("qwen2_5"), "qwen2")
    path = jsonl(root / "sft.jsonl", SFT_ROWS)
    args = ["stage=sft", f"init.weights={folder}", "data.chat.kind=local", f"data.chat.paths=[{path}]",
            "checkpoint.every=2", "data.seq_len=128"]
    return folder, root / "sft", args, run_training(root / "sft", prepared_data, *args, "trainer.max_steps=2")


def conversations_in(windows, pad_id):
    """The (tokens, labels) of each conversation packed into the windows, window by window."""
    found = []
    for i in range(len(windows)):
        w = windows[i]
        for doc in range(int(w.doc_ids.max()) + 1):
            tokens, labels = w.tokens[w.doc_ids == doc].tolist(), w.labels[w.doc_ids == doc].tolist()
            if any(label != IGNORE for label in labels):
                found.append((tokens, labels))
    return found


def test_sft_from_a_hugging_face_template_equals_trls_masks_and_a_restart_reuses_the_cache(prepared_data, qwen_sft,
                                                                                          tmp_path):
    """~35 s. The cached windows hold, conversation by conversation, TRL's completion-only tokenization of the same
    rows (SFTTrainer's dataset preparation with the folder's tokenizer); the second start reuses the cache."""
    folder, run, args, first = qwen_sft
    report = data_report(first)
    assert "tokenized into" in report and "skipped" not in report, report
    cache = cache_of(report)
    assert cache.parent == run / "tokenized" and (run / "tokenizer" / "tokenizer.json").is_file()
    chat = chat_format(str(folder))
    train_rows, _ = split_held_out(SFT_ROWS, 0.05)
    expected = [(r["input_ids"], r["labels"]) for r in trl_sft(chat, train_rows, tmp_path, assistant_only_loss=False)]
    # best-fit-decreasing packing places conversations out of their order: compare them as a multiset
    assert sorted(conversations_in(SFTWindows.load(cache, "train"), chat.pad_id)) == sorted(expected)
    built = (cache / "meta.json").stat().st_mtime_ns

    second = run_training(run, prepared_data, *args, "trainer.max_steps=3")
    assert data_report(second).startswith(f"data: {len(SFT_ROWS)} conversations") and f"reused {cache}" in data_report(second)
    assert (cache / "meta.json").stat().st_mtime_ns == built and "resumed from" in second.stdout
    assert sorted(losses(run)) == [1, 2, 3]


@pytest.mark.heavy
def test_dpo_after_sft_keeps_the_template_and_equals_trls_tokens(prepared_data, qwen_sft, tmp_path):
    """~30 s. DPO from the SFT run's model folder (our format, the tokenizer with its template): the cached pairs
    are TRL's DPO tokenization of the same implicit-prompt rows."""
    folder, sft_run, _, _ = qwen_sft
    path = jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = run_training(tmp_path / "dpo", prepared_data, "stage=dpo", f"init.weights={sft_run / 'model'}",
                          "data.chat.kind=local", f"data.chat.paths=[{path}]", "trainer.max_steps=2", "data.seq_len=128")
    report = data_report(result)
    assert report.startswith("data: ") and "preference pairs" in report and "skipped" not in report, report
    chat = chat_format(str(folder))
    train_rows, _ = split_held_out(PAIRS, 0.05)
    pairs = PairArrays.load(cache_of(report), "train")
    assert len(pairs) == len(train_rows)
    for i, reference in enumerate(trl_dpo(chat, train_rows, tmp_path)):
        prompt = reference["prompt_ids"]
        assert pairs[i].chosen_ids == prompt + reference["chosen_ids"]
        assert pairs[i].rejected_labels == [IGNORE] * len(prompt) + reference["rejected_ids"]
    assert sorted(losses(tmp_path / "dpo")) == [1, 2]


@pytest.mark.heavy
def test_an_asked_for_template_adds_tokens_and_grows_the_model_by_mean_rows(prepared_data, tmp_path):
    """~20 s. A Llama folder whose tokenizer has no chat template, with data.chat_template=chatml: <|im_start|>
    and <|im_end|> are added, the embedding and head grow by two rows, each the mean of the old rows (lr 0: the
    final model is the initial one), and the run's tokenizer keeps the tokens."""
    from safetensors.torch import load_file

    folder = hf_chat_model(tmp_path / "hf", "llama3", None, "llama", tokens=["<|begin_of_text|>", "<|eot_id|>"])
    path = jsonl(tmp_path / "sft.jsonl", [{"messages": [user(f"Say {i}."), assistant(f"{i}.")]} for i in range(20)])
    result = run_training(tmp_path / "run", prepared_data, "stage=sft", f"init.weights={folder}",
                          "data.chat_template=chatml", "data.chat.kind=local", f"data.chat.paths=[{path}]",
                          "trainer.max_steps=1", "optim.lr=0", "optim.warmup_steps=0")
    old = load_model(folder).state_dict()
    vocab = old["embed.weight"].shape[0]
    assert f"added <|im_start|>, <|im_end|> to the tokenizer (vocabulary {vocab + 2:,})" in data_report(result)
    new = load_file(tmp_path / "run" / "model" / "model.safetensors")
    for name in ("embed.weight", "output.weight"):
        assert new[name].shape[0] == vocab + 2
        torch.testing.assert_close(new[name][:vocab], old[name])
        torch.testing.assert_close(new[name][vocab:], old[name].mean(0, keepdim=True).expand(2, -1))
    assert chat_format(str(tmp_path / "run" / "model")).vocab_size == vocab + 2
