"""Chat data for post-training, in layers that import only downwards:

    template.py     the chat format: the Jinja template and the same rendering in Python, assistant masks
    rows.py         where rows come from (ChatSource), the shared bad-row reader and its counts (Skipped)
    sft.py          SFT: rows -> conversations (messages, prompt/completion, Alpaca, HH-RLHF) -> packed windows
    preferences.py  DPO: rows -> preference pairs (explicit or shared prompt) -> padded [2B, L] batches
    stdlib.py       the embedded default: standard-library questions and pairs, as plain values
"""
