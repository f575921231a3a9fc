"""The multi-token prediction loss against cross-entropies written out from full logits, and the MTP
modules' place in the model: inference ignores them, the state dict and model folder keep them."""

import torch
import torch.nn.functional as F

from train.loss import IGNORE
from train.model import build_model, load_model, save_model
from train.objectives import NextToken


def mtp_batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8192, (2, 13), generator=g)
    targets = tokens[:, 1:].clone()
    targets[0, :4] = IGNORE  # a prompt
    return {"inputs": tokens[:, :-1], "targets": targets}


def test_mtp_loss_is_lambda_over_depth_times_the_modules_mean_cross_entropies():
    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.1, **{"mtp.depth": 2, "mtp.loss_weight": 0.4})
    batch = mtp_batch()
    loss, aux, stats = NextToken(chunk_tokens=5)(model, batch)
    hidden = model.hidden_states(batch["inputs"])
    W = model.output_weight()
    main = F.cross_entropy(hidden.flatten(0, 1) @ W.T, batch["targets"].reshape(-1), ignore_index=IGNORE, reduction="sum")
    states = model.mtp_hidden_states(hidden, batch["inputs"])
    means, sums = [], []
    for k, state in enumerate(states, start=1):  # module k, row i: token i + k + 1 = targets[:, i + k]
        logits, targets = state.flatten(0, 1) @ W.T, batch["targets"][:, k:].reshape(-1)
        means.append(F.cross_entropy(logits, targets, ignore_index=IGNORE))
        sums.append(F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum"))
    torch.testing.assert_close(loss, main)  # the next-token loss alone
    torch.testing.assert_close(aux, 0.4 / 2 * (means[0] + means[1]))
    torch.testing.assert_close(stats["mtp_loss"], (sums[0] + sums[1]) / 2)
    (loss + aux).backward()
    assert model.mtp[1].eh_proj.weight.grad.abs().sum() > 0 and model.mtp[0].block.ffn.up_proj.weight.grad is not None


def test_mtp_module_is_its_formula():
    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.1, **{"mtp.depth": 1}).eval()
    ids = torch.randint(0, 8192, (2, 9))
    with torch.no_grad():
        hidden = model.hidden_states(ids)
        m = model.mtp[0]
        x = m.eh_proj(torch.cat([m.enorm(model.embed(ids[:, 1:])), m.hnorm(hidden[:, :-1])], dim=-1))
        expected = m.head_norm(m.block(x, torch.arange(8).expand(2, 8)))
        torch.testing.assert_close(model.mtp_hidden_states(hidden, ids)[0], expected)


def test_inference_ignores_the_mtp_modules_and_the_folder_keeps_them(tmp_path):
    torch.manual_seed(0)
    plain = build_model("llama3_tiny").eval()
    with_mtp = build_model("llama3_tiny", **{"mtp.depth": 1}).eval()
    missing, unexpected = with_mtp.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("mtp.0.") for name in missing)
    ids = torch.randint(0, 8192, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(with_mtp(ids), plain(ids))
    save_model(with_mtp, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config.mtp.depth == 1
    torch.testing.assert_close(loaded.mtp[0].eh_proj.weight, with_mtp.mtp[0].eh_proj.weight)
