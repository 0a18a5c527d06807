"""The one schema that flows through mlxhv: `Example` in, `Prediction` out.

Rules (docs/design.md):
- a VALIDATED example has confidence >= 0.7;
- `refined_hypothesis` is set for, and only for, REFINED examples;
- at least one evidence item; relevance and confidence in [0, 1];
- unknown fields are rejected everywhere;
- ids are unique within a file (checked by `mlxhv.data.validate`, since it spans lines).
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

DOMAINS = ("finance", "management", "risk", "marketing", "operations")
LEVELS = (1, 2, 3, 4)
VALIDATED_MIN_CONFIDENCE = 0.7


class Decision(str, Enum):
    VALIDATED = "VALIDATED"
    REJECTED = "REJECTED"
    REFINED = "REFINED"


DECISIONS = tuple(d.value for d in Decision)
INVALID = "INVALID"  # a prediction whose output could not be parsed


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Evidence(_Strict):
    source: str = Field(min_length=1, description="Where the evidence comes from (study, report, internal data…)")
    content: str = Field(min_length=1, description="What the source says")
    relevance: float = Field(ge=0.0, le=1.0, description="How directly it bears on the hypothesis, 0-1")


class Metadata(_Strict):
    domain: str = Field(pattern=r"^[a-z][a-z_-]*$", description="e.g. finance, management, risk, marketing, operations")
    difficulty_level: int = Field(ge=1, le=4, description="Curriculum level: 1 clear-cut … 4 subtle")
    topic: str = Field(min_length=1)


class Example(_Strict):
    id: str = Field(min_length=1, pattern=r"^\S+$")
    hypothesis: str = Field(min_length=1)
    evidence: list[Evidence] = Field(min_length=1)
    expected_decision: Decision
    confidence: float = Field(ge=0.0, le=1.0)
    refined_hypothesis: Optional[str] = None
    metadata: Metadata

    @model_validator(mode="after")
    def _rules(self) -> "Example":
        if self.expected_decision == Decision.VALIDATED and self.confidence < VALIDATED_MIN_CONFIDENCE:
            raise ValueError(f"VALIDATED needs confidence >= {VALIDATED_MIN_CONFIDENCE}, got {self.confidence}")
        if self.expected_decision == Decision.REFINED:
            if not self.refined_hypothesis:
                raise ValueError("REFINED needs a refined_hypothesis")
        elif self.refined_hypothesis is not None:
            raise ValueError(f"refined_hypothesis must be null for {self.expected_decision.value}")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)


class Prediction(_Strict):
    """A judge's answer to one example, as written to predictions.jsonl."""

    id: str
    decision: Union[Decision, Literal["INVALID"]]
    # The confidence returned: the model's probability of its decision word when known, else the stated number
    # (`confidence_source` says which; mlxhv.answer). Files written before `confidence_source` existed hold the
    # stated number here.
    confidence: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    stated_confidence: Optional[float] = Field(default=None, ge=0.0, le=1.0)  # the number the answer wrote
    confidence_source: Optional[Literal["decision_prob", "stated"]] = None
    refined_hypothesis: Optional[str] = None
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: bool = False  # stopped by the token budget, not by EOS
    latency_s: float = 0.0
    # The model's own probability of the decision word: exp(Σ log p) over the generated tokens that spell it,
    # under the distribution they were drawn from (mlxhv.answer); None when unknown (older files).
    decision_prob: Optional[float] = Field(default=None, ge=0.0, le=1.0)

    @property
    def is_valid(self) -> bool:
        return self.decision != INVALID

    @property
    def stated(self) -> Optional[float]:
        """The number the answer stated (for files of either layout)."""
        legacy = self.confidence_source is None and self.stated_confidence is None
        return self.confidence if legacy else self.stated_confidence


class Topic(_Strict):
    id: str = Field(min_length=1, pattern=r"^\S+$")
    domain: str = Field(pattern=r"^[a-z][a-z_-]*$")
    title: str = Field(min_length=1)
    description: str = ""


SCHEMAS = {"example": Example, "prediction": Prediction, "topic": Topic}


def json_schema(name: str = "example") -> dict:
    """The JSON schema of one record type (what structured-output requests are given)."""
    return SCHEMAS[name].model_json_schema()
