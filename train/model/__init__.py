"""The model zoo: configurable decoder-only models (GPT-2, Llama 3, Qwen3, DeepSeek-V3 MLA, Qwen3-Next
Gated DeltaNet hybrids, Mamba2, Falcon-H1-style parallel hybrids, and mixes).

    from train.model import build_model, load_model, save_model
    model = build_model("llama3_tiny")        # configs/model/llama3_tiny.yaml, random init
    logits_BTV = model(input_ids_BT)          # or model(input_ids_BT, doc_ids_BT=doc_ids_BT)
"""

from train.model.folder import build_model, save_model
from train.model.config import ModelConfig, load_preset
from train.model.generate import generate
from train.model.load import load_model
from train.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "build_model", "generate", "load_model", "load_preset", "save_model"]
