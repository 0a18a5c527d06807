"""The instructions datagen sends: topic writing, example writing and the QA judge (the judge's own prompt is
mlxhv/prompts.py).

Each builder returns chat messages. The writer's user message starts with a machine-readable line
`Cell: domain=… level=… decision=…` (what was planned), which also lets a test server answer in kind.
"""

from __future__ import annotations

import json
from typing import Optional

from mlxhv.schema import Example

LEVELS_TEXT = {
    1: "clear-cut: every evidence item points the same way, with high relevance (>= 0.7); no reasonable reader "
       "could disagree",
    2: "mostly one-sided with minor noise: the evidence clearly points one way, plus one weaker opposing or "
       "neutral item",
    3: "mixed: credible evidence on both sides, or an effect that holds only in part, which must be weighed by "
       "relevance and quality",
    4: "subtle: strong-sounding but misleading or low-relevance sources (relevance < 0.3) point the wrong way, "
       "or a scope condition is easy to miss; a careless reader gets it wrong",
}

DECISIONS_TEXT = {
    "VALIDATED": "the evidence, weighted by relevance, supports the hypothesis as stated; confidence at least 0.7; "
                 "refined_hypothesis null",
    "REJECTED": "the evidence, weighted by relevance, contradicts the hypothesis or fails to support it; "
                "refined_hypothesis null",
    "REFINED": "the evidence supports the hypothesis only in a narrower scope or under a condition; "
               "refined_hypothesis states that narrower claim",
}

WRITER_SYSTEM = """You write examples for a dataset that trains and tests an AI judge of business hypotheses.
Each example is a hypothesis, 2 to 5 pieces of evidence, and the decision a careful analyst reaches:
- VALIDATED: {VALIDATED}.
- REJECTED: {REJECTED}.
- REFINED: {REFINED}.
Curriculum levels (difficulty):
1 {l1}.
2 {l2}.
3 {l3}.
4 {l4}.
Rules: the evidence must be realistic and specific (named kinds of sources, samples, periods, numbers) but must
not cite real private data; relevance is 0-1 and honest (how directly the item bears on the hypothesis); the
confidence reflects how strongly the evidence supports the decision (lower at higher levels, but VALIDATED needs
at least 0.7); never state the answer inside the evidence.""".format(
    **DECISIONS_TEXT, l1=LEVELS_TEXT[1], l2=LEVELS_TEXT[2], l3=LEVELS_TEXT[3], l4=LEVELS_TEXT[4])

QA_SYSTEM = """You are a strict reviewer of a dataset for an AI judge of business hypotheses.
Decisions: VALIDATED ({VALIDATED}); REJECTED ({REJECTED}); REFINED ({REFINED}).
Curriculum levels: 1 {l1}; 2 {l2}; 3 {l3}; 4 {l4}.
Review one example. First decide yourself, from the hypothesis and evidence alone, which decision is right
(judged_decision). Then check: is the label right for the evidence; is the difficulty what the level asks; is
the confidence consistent with the strength of the evidence; is the evidence realistic and specific. Accept only
when every check passes; otherwise give one short, actionable reason per failed check.""".format(
    **DECISIONS_TEXT, l1=LEVELS_TEXT[1], l2=LEVELS_TEXT[2], l3=LEVELS_TEXT[3], l4=LEVELS_TEXT[4])


def writer_messages(*, domain: str, level: int, decision: str, topic_title: str, topic_description: str = "",
                    feedback: Optional[list[str]] = None) -> list[dict]:
    """Messages asking for one example in a planned cell; `feedback` holds reasons an earlier attempt failed."""
    topic = topic_title + (f" — {topic_description}" if topic_description else "")
    user = (f"Cell: domain={domain} level={level} decision={decision}\n"
            f"Write one example in the {domain} domain on the topic: {topic}.\n"
            f"Difficulty level {level}: {LEVELS_TEXT[level]}.\n"
            f"The correct decision must be {decision}: {DECISIONS_TEXT[decision]}.\n"
            "Set expected_decision to that decision.")
    if feedback:
        user += ("\nA previous attempt for this cell was rejected. Write a new example that avoids these "
                 "problems:\n" + "\n".join(f"- {r}" for r in feedback))
    return [{"role": "system", "content": WRITER_SYSTEM}, {"role": "user", "content": user}]


def qa_messages(example: Example) -> list[dict]:
    """Messages asking the judge to grade one example against its planned level."""
    level = example.metadata.difficulty_level
    shown = {k: v for k, v in example.model_dump(mode="json").items() if k not in ("id", "metadata")}
    user = (f"Domain: {example.metadata.domain}. Topic: {example.metadata.topic}.\n"
            f"Planned level {level}: {LEVELS_TEXT[level]}.\n"
            f"Example:\n{json.dumps(shown, ensure_ascii=False, indent=1)}")
    return [{"role": "system", "content": QA_SYSTEM}, {"role": "user", "content": user}]


def topics_messages(*, domain: str, k: int, avoid: list[str]) -> list[dict]:
    """Messages asking for `k` distinct topics in `domain`, none like the titles in `avoid`."""
    user = (f"Domain: {domain}\nNumber of topics: {k}\n"
            f"List {k} distinct, specific {domain} topics on which concrete business hypotheses can be tested "
            "against evidence (studies, reports, internal data). Each topic a different subject, not a rewording "
            "of another.")
    if avoid:
        user += "\nDo not repeat or reword any of these existing topics:\n" + "\n".join(f"- {t}" for t in avoid)
    system = "You design the topic list of a dataset of business hypotheses for an AI judge."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
