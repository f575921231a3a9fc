"""DeepSeek-V3's multi-token prediction module against transformers' MtpModel (modeling_layers.py, the
drafter of `generate(use_mtp=True)`): our tiny model with mtp.depth=2 exported, its main model loaded by
DeepseekV3ForCausalLM (which skips the MTP layers), the MTP layers by MtpModel.from_pretrained; each
module's logits equal ours to 1e-5 (fp32)."""

import pytest
import torch
import transformers
from transformers.modeling_layers import MtpModel

from train.model import build_model, load_model
from train.model.hf import export_hf
from tests.model_helpers import perturbed


def mtp_model(tmp_path):
    torch.manual_seed(0)
    model = perturbed(build_model("deepseek_v3_tiny", init_std=0.1, **{"mtp.depth": 2}).eval())
    export_hf(model, tmp_path / "hf")
    return model


def hf_mtp(main):
    """transformers' MtpModel.from_pretrained on the main model's folder. It finds the MTP layers by the main
    class's ignore patterns (DeepSeek-V3's layer 61); the tiny model's are layers 2 and 3."""
    main._keys_to_ignore_on_load_unexpected = [r"model\.layers\.2\..*", r"model\.layers\.3\..*"]
    return MtpModel.from_pretrained(main).eval()


def test_mtp_modules_match_transformers_mtp_model(tmp_path):
    model = mtp_model(tmp_path)
    main = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert main.config.num_mtp_layers == 2
    drafter = hf_mtp(main)
    ids = torch.randint(0, 8192, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = model.hidden_states(ids)
        torch.testing.assert_close(main(ids, output_hidden_states=True).hidden_states[-1], hidden, atol=1e-5, rtol=1e-5)
        ours = model.mtp_hidden_states(hidden, ids)
        previous = hidden
        for k, state in enumerate(ours):  # module k + 1 reads token i + k + 1 and module k's state at i
            T = ids.shape[1] - k - 1
            positions = torch.arange(k + 1, k + 1 + T).expand(2, T)
            previous = drafter.forward_layer(k, previous[:, :T], positions, None, input_ids=ids[:, k + 1:])
            theirs = drafter._project_to_logits(previous)
            assert theirs.std() > 0.1
            torch.testing.assert_close(state @ model.output_weight().T, theirs, atol=1e-5, rtol=1e-5)


def test_mtp_weights_round_trip_and_folders_without_them_import_without(tmp_path):
    model = mtp_model(tmp_path)
    back = load_model(tmp_path / "hf")
    assert back.config.mtp.depth == 2
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, atol=0, rtol=0)
    # transformers' own save_pretrained writes no MTP layer although its config counts num_mtp_layers = 1
    main = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    main.config.num_mtp_layers = 1
    main.save_pretrained(tmp_path / "saved")
    assert load_model(tmp_path / "saved").config.mtp.depth == 0


def test_export_refuses_mtp_without_an_moe_last_layer(tmp_path):
    model = build_model("deepseek_v3_tiny", **{"mtp.depth": 1, "layer_ffns": ["swiglu"]})
    with pytest.raises(ValueError, match="MTP modules are MoE blocks"):
        export_hf(model, tmp_path / "hf")
