"""The pydantic models sent to the API as `response_format`, and their conversion to `mlxhv.schema` records.

Why separate "draft" models: OpenAI structured outputs (strict mode) accept only a subset of JSON schema — every
property required, `additionalProperties: false`, no defaults, and few validation keywords. `Example` has ids,
metadata the plan decides, length/range constraints and cross-field rules. So the API is asked for an
`ExampleDraft` (only what the writer must invent: plain strings, numbers, an enum, nullable fields) and
`draft_to_example` builds the `Example`, where pydantic enforces every rule; its errors are what a re-ask sends back.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from mlxhv.schema import Decision, Example


class _Draft(BaseModel):
    # extra="forbid" makes pydantic emit additionalProperties: false; no field has a default (strict mode).
    model_config = ConfigDict(extra="forbid")


class EvidenceDraft(_Draft):
    source: str = Field(description="Where the evidence comes from: a named study, report, survey or internal data set")
    content: str = Field(description="What the source found, concretely (numbers, sample, period)")
    relevance: float = Field(description="How directly it bears on the hypothesis, from 0.0 to 1.0")


class ExampleDraft(_Draft):
    hypothesis: str = Field(description="A specific, testable business hypothesis")
    evidence: list[EvidenceDraft] = Field(description="2 to 5 evidence items")
    expected_decision: Decision = Field(description="The decision the evidence supports")
    confidence: float = Field(description="How strongly the evidence supports that decision, 0.0 to 1.0")
    refined_hypothesis: Optional[str] = Field(description="The narrower hypothesis that holds (REFINED only), else null")


class QAVerdict(_Draft):
    judged_decision: Decision = Field(description="The decision YOU reach from the hypothesis and evidence alone")
    label_correct: bool = Field(description="Is expected_decision right for the evidence?")
    difficulty_matches_level: bool = Field(description="Is the example as hard as its curriculum level asks?")
    confidence_consistent: bool = Field(description="Does the confidence fit the strength of the evidence?")
    evidence_realistic: bool = Field(description="Are the sources and findings plausible and specific?")
    accept: bool = Field(description="Keep the example in the dataset?")
    reasons: list[str] = Field(description="Short reasons for every failed check; empty when accepted")


class TopicDraft(_Draft):
    title: str = Field(description="A short, specific topic title (3-8 words)")
    description: str = Field(description="One sentence: which hypotheses this topic covers")


class TopicList(_Draft):
    topics: list[TopicDraft]


#: Sample replies shown in `prompt` mode next to the schema (small models copy shapes better than they read schemas).
SAMPLES: dict[type, dict] = {
    ExampleDraft: {
        "hypothesis": "Offering free shipping above $50 raises average order value for online apparel retailers.",
        "evidence": [
            {"source": "2023 e-commerce benchmark of 120 apparel stores", "content": "Stores adding a $50 "
             "free-shipping threshold saw average order value rise 14% within two quarters.", "relevance": 0.9},
            {"source": "Internal A/B test, 40,000 sessions", "content": "The threshold arm had 11% higher basket "
             "size than control (p < 0.01).", "relevance": 0.85},
        ],
        "expected_decision": "VALIDATED",
        "confidence": 0.88,
        "refined_hypothesis": None,
    },
    QAVerdict: {
        "judged_decision": "VALIDATED", "label_correct": True, "difficulty_matches_level": True,
        "confidence_consistent": True, "evidence_realistic": True, "accept": True, "reasons": [],
    },
    TopicList: {"topics": [{"title": "Dividend payout policy", "description": "Whether payout changes move returns."}]},
}


def _blank_to_none(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    t = text.strip()
    return None if t == "" or t.lower() in ("null", "none", "n/a") else t


def draft_to_example(draft: ExampleDraft, *, id: str, domain: str, level: int, topic: str) -> Example:
    """Build the `Example` for one planned cell; raises pydantic.ValidationError when a schema rule fails.

    The plan fixes id, domain, level and topic; the writer's decision is kept as written (the caller checks it
    against the plan). An empty or "null" refined_hypothesis counts as null.
    """
    # Built from a dict so pydantic reports nested errors with their path (evidence[1].relevance).
    return Example.model_validate({
        "id": id,
        "hypothesis": draft.hypothesis,
        "evidence": [e.model_dump() for e in draft.evidence],
        "expected_decision": draft.expected_decision,
        "confidence": draft.confidence,
        "refined_hypothesis": _blank_to_none(draft.refined_hypothesis),
        "metadata": {"domain": domain, "difficulty_level": level, "topic": topic},
    })


def qa_accepts(verdict: QAVerdict, example: Example) -> bool:
    """Accepted = the judge says accept, every check passes, and its own decision equals the label."""
    return (
        verdict.accept
        and verdict.label_correct
        and verdict.difficulty_matches_level
        and verdict.confidence_consistent
        and verdict.evidence_realistic
        and verdict.judged_decision == example.expected_decision
    )


def qa_reasons(verdict: QAVerdict, example: Example) -> list[str]:
    """The judge's reasons, plus one line per failed check it did not explain."""
    reasons = [r.strip() for r in verdict.reasons if r and r.strip()]
    if not reasons:
        checks = {
            "label_correct": "the label does not fit the evidence",
            "difficulty_matches_level": "the difficulty does not match the curriculum level",
            "confidence_consistent": "the confidence does not fit the strength of the evidence",
            "evidence_realistic": "the evidence is not realistic",
        }
        reasons = [text for name, text in checks.items() if not getattr(verdict, name)]
    if verdict.judged_decision != example.expected_decision:
        reasons.append(f"the reviewer reads the evidence as {verdict.judged_decision.value}, "
                       f"not {example.expected_decision.value}")
    return reasons or ["the reviewer did not accept the example"]
