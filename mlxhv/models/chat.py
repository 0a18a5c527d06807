"""Chat prompts as token ids."""

from __future__ import annotations


def apply_chat_template(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` ([{"role": …, "content": …}]) under the tokenizer's chat template.

    A tokenizer without a template gets the contents joined by blank lines (base models)."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    if getattr(hf, "chat_template", None) is None:
        text = "\n\n".join(m["content"] for m in messages) + ("\n\n" if add_generation_prompt else "")
        return list(tokenizer.encode(text))
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if hasattr(ids, "keys"):  # transformers may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]
