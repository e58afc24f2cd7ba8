"""The one protocol every quality check implements.

A scorer looks at a batch of Samples and returns, per sample, numeric scores and
the reasons to reject (empty = this scorer accepts). The pipeline runs scorers in
order and merges their verdicts; rejected samples are kept with their reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from factory.core import Reason, Sample


@dataclass
class Verdict:
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[Reason] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return not self.reasons

    def merge(self, other: "Verdict") -> "Verdict":
        return Verdict({**self.scores, **other.scores}, [*self.reasons, *other.reasons])


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, samples: Sequence[Sample]) -> list[Verdict]: ...


def score_all(scorers: Sequence[Scorer], samples: Sequence[Sample]) -> list[Verdict]:
    """Run every scorer over the batch and merge their verdicts per sample."""
    verdicts = [Verdict() for _ in samples]
    for scorer in scorers:
        for i, v in enumerate(scorer.score(samples)):
            verdicts[i] = verdicts[i].merge(v)
    return verdicts
