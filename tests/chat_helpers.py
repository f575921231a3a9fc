"""Tiny Hugging Face tokenizers with real chat templates, for tests: a byte-level BPE trained in-process on a
few KB, holding the special tokens of ChatML (Qwen2.5), Llama 3 and Mistral, saved with one template.

The Qwen2.5 and Llama 3 / 3.1 templates are the models' own, as TRL 1.16 ships them (trl/chat_templates/,
with the `_training` variants that add `{% generation %}` blocks); Mistral's is its v0.3 [INST] template
(tools, tool calls and results; the system message goes before the first user message, as v0.1/v0.2 do).
"""

import types
from pathlib import Path

MISTRAL = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.first and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool" %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

SPECIAL = {  # family -> (bos, eos, pad)
    "qwen2_5": (None, "<|im_end|>", "<|endoftext|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", None),
    "mistral": ("<s>", "</s>", None),
}
TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>",
          "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<s>", "</s>", "[INST]", "[/INST]",
          "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]


def template(name: str) -> str:
    """qwen2_5, qwen2_5_training, llama3, llama3_1, llama3_training (TRL's files), or mistral."""
    if name == "mistral":
        return MISTRAL
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def bpe(vocab_size: int = 700, tokens=TOKENS):
    """A byte-level BPE trained on ~40 topics of Python's documentation, with `tokens` as special tokens."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([topics[n] for n in sorted(topics)][:40], trainer)
    return tokenizer


def save_hf_tokenizer(folder: Path, family: str, chat_template: str | None, tokens=TOKENS) -> Path:
    """A Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = SPECIAL[family]
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe(tokens=tokens), bos_token=bos, eos_token=eos, pad_token=pad)
    if chat_template is not None:
        hf.chat_template = chat_template
    hf.save_pretrained(str(folder))
    return folder


def trl_args(kind, tmp_path, **options):
    import trl

    config = trl.SFTConfig if kind == "sft" else trl.DPOConfig
    return config(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, max_length=None, **options)


def trl_sft(chat, rows, tmp_path, assistant_only_loss: bool):
    """TRL's SFT dataset preparation of `rows` (its trainer's own method, on a stand-in for the trainer) with the
    tokenizer of a TemplateFormat `chat`: rows with input_ids and labels."""
    import datasets
    import trl

    trainer = types.SimpleNamespace(_tokenizer=chat.tokenizer, chat_template=None,
                                    completion_only_loss="completion" in rows[0])
    args = trl_args("sft", tmp_path, assistant_only_loss=assistant_only_loss)
    return trl.SFTTrainer._prepare_dataset(trainer, datasets.Dataset.from_list(rows), chat.tokenizer, args, False, None,
                                           "train")


def trl_dpo(chat, rows, tmp_path):
    """TRL's DPO dataset preparation: rows with prompt_ids, chosen_ids and rejected_ids."""
    import datasets
    import trl

    trainer = types.SimpleNamespace(_tokenizer=chat.tokenizer)
    return trl.DPOTrainer._prepare_dataset(trainer, datasets.Dataset.from_list(rows), chat.tokenizer,
                                           trl_args("dpo", tmp_path), "train")
