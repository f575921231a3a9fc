"""Bring your own model: sharded (index.json) bf16 Hugging Face folders read region by region, the model
config from config.json alone, sharded and bf16 exports, exports of DCP step checkpoints, and the
one-line errors of `python -m train.export`. Numbers are compared with transformers."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from common.paths import REPO
from data.reader import TokenWindows
from tests.train_helpers import consumed_indices, losses, run_training
from train.export import export
from train.model import build_model, load_model, save_model
from train.model.hf import INDEX_FILE, export_hf
from train.model.load import model_config, read_weights

SMALL = dict(vocab_size=96, hidden_size=64, max_position_embeddings=256, initializer_range=0.1, attn_implementation="eager")
HF_MODELS = {  # a plain table, a fused and transposed one (c_attn), per-expert tensors
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1,
                                               bos_token_id=0, eos_token_id=0, attn_implementation="eager")),
    "qwen3_moe": lambda: Qwen3MoeForCausalLM(Qwen3MoeConfig(
        **SMALL, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_experts=6, num_experts_per_tok=2)),
}


def save_sharded_bf16(model, folder):
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="40KB")
    assert (folder / INDEX_FILE).is_file() and len(list(folder.glob("*.safetensors"))) > 2


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out).float()


@pytest.mark.parametrize("name", HF_MODELS)
def test_sharded_bf16_folder_regions_equal_the_whole_model(name, tmp_path):
    torch.manual_seed(0)
    save_sharded_bf16(HF_MODELS[name](), tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    whole = load_model(tmp_path).eval()
    assert model_config(tmp_path) == whole.config  # from config.json alone
    ids = torch.randint(0, 96, (2, 16))
    torch.testing.assert_close(logits(whole, ids), logits(reference, ids), atol=1e-5, rtol=1e-5)
    # two ranks' Shard(0) regions of every tensor (the second half may be empty): bf16 as stored, the rows of the whole
    state = whole.state_dict()
    for half in (0, 1):
        regions = {}
        for key, tensor in state.items():
            rows = -(-tensor.shape[0] // 2) if tensor.ndim else 0
            regions[key] = (slice(half * rows, min((half + 1) * rows, tensor.shape[0])), *[slice(0, n) for n in tensor.shape[1:]]) \
                if tensor.ndim else ()
        read = dict(read_weights(tmp_path, whole.config, regions))
        assert read.keys() == state.keys()
        for key, piece in read.items():
            assert piece.dtype == torch.bfloat16, key
            torch.testing.assert_close(piece.float(), state[key][regions[key]], atol=0, rtol=0)


def test_sharded_export_round_trips_through_transformers(tmp_path):
    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.1).eval()
    out = export_hf(model, tmp_path / "hf", max_shard_size="300KB")
    files = sorted(p.name for p in out.glob("*.safetensors"))
    index = json.loads((out / INDEX_FILE).read_text())
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.randint(0, 8192, (2, 20))
    torch.testing.assert_close(logits(reference, ids), logits(model, ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(load_model(out).eval(), ids), logits(model, ids), atol=0, rtol=0)


def test_bf16_export_keeps_bf16_and_says_so(tmp_path):
    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.1).eval()
    out = export_hf(model, tmp_path / "hf", dtype="bf16")
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()
    assert reference.model.embed_tokens.weight.dtype == torch.bfloat16
    rounded = load_model(out).eval()  # the bf16 weights, exactly, in fp32
    assert torch.equal(rounded.embed.weight, model.embed.weight.to(torch.bfloat16).float())


def test_export_errors_are_one_line(tmp_path):
    run = tmp_path / "runs" / "x"
    complete, cut = run / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000005"
    complete.mkdir(parents=True)
    cut.mkdir()
    (complete / ".metadata").write_bytes(b"")
    (complete / "trainer.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "train.export", f"model_dir={cut}", f"out={tmp_path / 'hf'}"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {cut}: not a complete step checkpoint (no .metadata); "
                                     "pick a complete one: step_00000004")
    with pytest.raises(FileNotFoundError, match=f"{complete}: no config.yaml in its run folder"):
        export(complete, tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        export(tmp_path / "absent", tmp_path / "hf")
    save_model(build_model("llama3_tiny"), tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has model.yaml but no model.safetensors"):
        export(tmp_path / "model", tmp_path / "hf")
    with pytest.raises(ValueError, match="max_shard_size='lots'"):
        export_hf(build_model("llama3_tiny"), tmp_path / "hf", max_shard_size="lots")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_sharded_hf_folder_pretrains_on_two_ranks_and_a_step_exports(prepared_data, tmp_path):
    """A bf16 index.json folder loads into FSDP2 on 2 gloo ranks, each rank reading its own rows: the first
    step's loss is the single-process run's. The step-3 DCP checkpoint exports, and transformers computes the
    logits of the run's model at that step."""
    torch.manual_seed(0)
    folder = tmp_path / "hf_in"
    save_sharded_bf16(LlamaForCausalLM(LlamaConfig(**{**SMALL, "vocab_size": 512}, intermediate_size=96, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2)), folder)
    # whole windows attended (no document masking), as transformers does
    start = ["stage=pretrain", f"init.weights={folder}", "data.document_masking=false", "trainer.record_samples=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_training(one, prepared_data, *start, "trainer.max_steps=1")
    run_training(two, prepared_data, *start, "trainer.max_steps=3", "checkpoint.every=3", nproc=2)
    assert losses(two)[1] == pytest.approx(losses(one)[1], rel=1e-5)
    # and it is transformers' loss of the folder's model on step 1's windows
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    windows = TokenWindows(prepared_data, "train", 64, seed=0, shuffle=True)
    tokens = torch.from_numpy(np.stack([windows[i].tokens for i in consumed_indices(one)])).long()
    expected = torch.nn.functional.cross_entropy(logits(reference, tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    assert losses(one)[1] == pytest.approx(expected.item(), rel=1e-5)

    out = tmp_path / "hf_out"
    subprocess.run([sys.executable, "-m", "train.export", f"model_dir={two / 'checkpoints' / 'step_00000003'}", f"out={out}"],
                   cwd=REPO, check=True, capture_output=True)
    assert (out / "tokenizer.json").is_file() and "eos_token_id" in json.loads((out / "generation_config.json").read_text())
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.randint(0, 512, (2, 24))
    torch.testing.assert_close(logits(reference, ids), logits(load_model(two / "model").eval(), ids), atol=1e-5, rtol=1e-5)


# CI runs one family; the others are heavy (`make test-heavy`).
FAMILY_PRESETS = ["llama3_2_1b_tiny"] + [pytest.param(preset, marks=pytest.mark.heavy) for preset in
                                         ("mistral_7b_tiny", "qwen2_5_0_5b_tiny", "mixtral_8x7b_tiny", "gemma3_tiny", "olmo2_tiny")]


@pytest.mark.slow
@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_every_new_family_pretrains_from_its_hugging_face_folder(prepared_data, preset, tmp_path):
    """`python -m train stage=pretrain init.weights=<a Hugging Face folder>` for each family the interop work
    added: the exported tiny preset is the folder; training starts from its weights (the first loss equals
    transformers' own on the first global batch) and takes its steps."""
    torch.manual_seed(0)
    export_hf(build_model(preset, vocab_size=512), tmp_path / "hf")
    run_training(tmp_path / "run", prepared_data, "stage=pretrain", f"init.weights={tmp_path / 'hf'}",
                 "trainer.max_steps=2", "trainer.record_samples=true", "model.vocab_size=512")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    windows = TokenWindows(prepared_data, "train", 64, seed=0)
    first = sorted(consumed_indices(tmp_path / "run"))[:8]
    tokens = torch.from_numpy(np.stack([windows[i].tokens for i in first]))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(reference(tokens[:, :-1]).logits.flatten(0, 1).float(),
                                                     tokens[:, 1:].flatten())
    assert sorted(losses(tmp_path / "run")) == [1, 2]
    assert losses(tmp_path / "run")[1] == pytest.approx(float(expected), rel=1e-4)
