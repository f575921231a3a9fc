"""Chat data for post-training, in layers that import only downwards:

    template.py     this project's chat format: the Jinja template and the same rendering in Python, assistant masks
    rows.py         where rows come from (ChatSource), the shared bad-row reader and its counts (Skipped)
    formats.py      the table of row formats (TRL's standard/conversational forms, Alpaca, HH-RLHF) and detection
    chat_format.py  conversations -> tokens and labels: ours, or a tokenizer's own Jinja template (TRL's masks)
    workers.py      tokenizing large sets in worker processes
    cache.py        the tokenized cache, keyed by a fingerprint, built once and reused by every rank and restart
    sft.py          SFT: rows -> conversations -> packed windows
    preferences.py  DPO: rows -> preference pairs -> padded [2B, L] batches
    stdlib.py       the embedded default: standard-library questions and pairs, as plain values
"""
