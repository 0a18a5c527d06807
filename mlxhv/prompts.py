"""The judge prompt and the answer parser, shared by `mlxhv eval` and the PPO trainer.

Prompt: a system message stating the three decisions and the answer format, and a user message with the
hypothesis and the numbered evidence (source, relevance, content), rendered with the model's chat template
(`render_prompt`). The model may reason first; it must end with one JSON object

    {"decision": "VALIDATED" | "REJECTED" | "REFINED", "confidence": 0.0-1.0, "refined_hypothesis": "…" | null}

The answer's parser and its decision-token probability live in `mlxhv.answer`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Optional

from mlxhv.errors import SettingsError
from mlxhv.schema import Example

SYSTEM_PROMPT = """You are a rigorous research analyst. You judge a business hypothesis against the evidence given.

Decide one of:
- VALIDATED: the evidence, weighted by relevance, supports the hypothesis as stated.
- REJECTED: the evidence contradicts the hypothesis or fails to support it.
- REFINED: the evidence supports the hypothesis only in a narrower scope or under a condition; then rewrite the \
hypothesis so that it holds.

Give little weight to evidence of low relevance, however strongly it is worded. Your confidence is the \
probability, from 0 to 1, that your decision is correct.

End your answer with exactly one JSON object on its own line:
{"decision": "VALIDATED" | "REJECTED" | "REFINED", "confidence": <number from 0 to 1>, \
"refined_hypothesis": <the rewritten hypothesis if REFINED, else null>}"""

USER_TEMPLATE = """Hypothesis: {hypothesis}

Evidence:
{evidence}

Is the hypothesis validated, rejected or refined by this evidence? Weigh it, then end your answer with the JSON \
object {{"decision": …, "confidence": …, "refined_hypothesis": …}}."""

# The question is in lower case on purpose: a small model that echoes it names all three decisions, which the
# parser's fallback reads as no answer (an upper-case echo would read as REFINED, the last word).


def format_evidence(example: Example) -> str:
    """Numbered evidence lines: `1. [source: …; relevance: 0.75] content`."""
    return "\n".join(
        f"{i}. [source: {ev.source}; relevance: {ev.relevance:.2f}] {ev.content}"
        for i, ev in enumerate(example.evidence, start=1)
    )


def build_messages(example: Example, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """The chat messages (system + user) for one example."""
    user = USER_TEMPLATE.format(hypothesis=example.hypothesis, evidence=format_evidence(example))
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


# An answer prefix ("prefill") opens the assistant's turn with the start of the JSON answer, so the model's first
# token is the decision. Small models that cannot follow the format on their own then always answer, and ECE
# measures their calibration instead of counting refusals as "confidence 0, wrong". No reasoning happens before
# the answer, so it is for small non-reasoning judges; models whose template opens <think> reject it.
JSON_ANSWER_PREFIX = '{"decision": "'


def load_system_prompt(path: str | None) -> str:
    """The system prompt: SYSTEM_PROMPT, or the text of the file at `path` (a prompt variant for a run)."""
    if not path:
        return SYSTEM_PROMPT
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"{path}: system prompt file not found")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise SettingsError(f"{path}: system prompt file is empty")
    return text


def resolve_answer_prefix(value: str | None) -> str:
    """Settings and the CLI accept "json" as a name for JSON_ANSWER_PREFIX; anything else is used as given."""
    return JSON_ANSWER_PREFIX if value == "json" else (value or "")


PROMPT_CONFIG_FILE = "judge_prompt.json"


@dataclass(frozen=True)
class PromptConfig:
    """How a judge adapter was trained to be prompted; saved beside its weights so every user prompts it alike.

    `system_prompt` is the full text (None: SYSTEM_PROMPT), so an adapter directory is self-contained offline."""

    system_prompt: Optional[str] = None
    answer_prefix: str = ""
    max_tokens: Optional[int] = None

    @property
    def system_prompt_text(self) -> str:
        return self.system_prompt or SYSTEM_PROMPT


def write_prompt_config(adapter_dir, config: PromptConfig) -> None:
    """Write `adapter_dir/judge_prompt.json` (mlx-lm ignores the file; `read_prompt_config` reads it back)."""
    from pathlib import Path

    d = dataclasses.asdict(config)
    if d["system_prompt"] == SYSTEM_PROMPT:
        d["system_prompt"] = None
    (Path(adapter_dir) / PROMPT_CONFIG_FILE).write_text(json.dumps(d, indent=2) + "\n")


def read_prompt_config(adapter_dir) -> Optional[PromptConfig]:
    """The PromptConfig saved with an adapter, or None for an adapter without one (made by mlx_lm.lora, say)."""
    from pathlib import Path

    from mlxhv.errors import ModelLoadError

    path = Path(adapter_dir) / PROMPT_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return PromptConfig(**d)
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelLoadError(f"{path}: not a judge prompt config ({e})") from None


def render_prompt(tokenizer, example: Example, system_prompt: str = SYSTEM_PROMPT,
                  answer_prefix: str = "") -> list[int]:
    """Token ids of the example's messages in the model's chat template, ending with the generation prompt
    and then `answer_prefix` (the opening of the assistant's answer; the parser reads prefix + completion)."""
    messages = build_messages(example, system_prompt)
    try:
        from mlxhv.models import apply_chat_template
    except ImportError:  # the loader is optional for callers that bring their own tokenizer
        apply_chat_template = None
    if apply_chat_template is not None:
        ids = list(apply_chat_template(tokenizer, messages))
    else:
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    if answer_prefix:
        if prompt_opens_think(tokenizer, ids):
            raise SettingsError("answer_prefix: this model's chat template opens a <think> block; an answer prefix "
                             "would land inside its reasoning. Leave it empty for reasoning models.")
        ids += list(tokenizer.encode(answer_prefix, add_special_tokens=False))
    return ids


def prompt_opens_think(tokenizer, prompt_ids: list[int]) -> bool:
    """True when the rendered prompt ends inside an open `<think>` block (QwQ's template does this)."""
    tail = tokenizer.decode(list(prompt_ids[-8:]))
    return tail.rstrip().endswith("<think>")


def prompt_sha(system_prompt: str = SYSTEM_PROMPT) -> str:
    """A short hash of the prompt text, so a resumed run never mixes answers to two different prompts."""
    return hashlib.sha256((system_prompt + "\x00" + USER_TEMPLATE).encode()).hexdigest()[:12]
