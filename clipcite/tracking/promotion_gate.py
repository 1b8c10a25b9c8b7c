"""The promotion gate: does a new model version replace the ``champion``? Pure: metrics in, decision out.

Both models are evaluated by the same evaluate step on the same eval sets (the champion as model ``champion``
beside ``finetuned``), so the comparison is like for like even after the data grew new images or classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clipcite.config import GateConfig
from clipcite.records import EvalReport


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate: float | None = None
    champion: float | None = None
    drops: dict[str, float] | None = None  # domain -> points lost against the champion, for kept domains that lost any

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def primary_metric(gate: GateConfig, body: EvalReport) -> str:
    if gate.metric != "auto":
        return gate.metric
    return "hm" if "hm" in body.mean.get("finetuned", {}) else "top1"


def decide_promotion(body: EvalReport, gate: GateConfig, *, version: int, holder: int | None) -> Decision:
    """The whole promotion rule for registered ``version``, given ``holder``, the version holding the champion
    alias now. A rerun of a run that already promoted keeps it; if the alias moved since the run's evaluation
    (``body.champion_version`` is what it was compared with), nothing is promoted on a stale comparison;
    otherwise the metrics decide (:func:`decide`)."""
    evaluated = body.champion_version
    metric = primary_metric(gate, body)
    if holder == version:
        return Decision(True, f"v{version} already holds champion", metric)
    if holder != evaluated:
        compared = f"v{evaluated}" if evaluated is not None else "no champion"
        reason = f"champion is v{holder} but this run was compared with {compared} (it moved during the run); rerun"
        return Decision(False, reason + " to compare", metric)
    return decide(body, gate, champion_version=evaluated)


def decide(body: EvalReport, gate: GateConfig, *, champion_version: int | None) -> Decision:
    """``body``: merged evaluate metrics (``domains``/``mean`` per model). No champion yet: promote."""
    metric = primary_metric(gate, body)
    if champion_version is None:
        return Decision(True, "no champion yet", metric, _value(body, "finetuned", metric, gate.domain))
    if "champion" not in body.mean:
        return Decision(False, f"champion v{champion_version} was not evaluated on these eval sets", metric)
    candidate = _value(body, "finetuned", metric, gate.domain)
    current = _value(body, "champion", metric, gate.domain)
    covered = ", ".join(body.mean_domains) or "the eval domains"
    where = f"on {gate.domain}" if gate.domain else f"mean over {covered}"
    drops = {}
    kept = gate.kept_domains or tuple(sorted(body.domains))
    for domain in kept:
        if domain not in body.domains:
            raise ValueError(f"gate.kept_domains: {domain!r} is not an eval domain ({sorted(body.domains)})")
        key = metric if metric in body.domains[domain]["finetuned"] else "top1"
        lost = body.domains[domain]["champion"][key] - body.domains[domain]["finetuned"][key]
        if lost > 0:
            drops[domain] = round(lost, 3)
    gain = candidate - current
    too_much = {d: v for d, v in drops.items() if v > gate.max_domain_drop}
    if gain <= 0 or gain < gate.min_improvement:
        needed = f">= {gate.min_improvement:.2f}" if gate.min_improvement > 0 else "> 0"
        reason = (
            f"{metric} {where} {candidate:.2f} vs champion v{champion_version} {current:.2f}: "
            f"gain {gain:+.2f}, needs {needed}"
        )
        return Decision(False, reason, metric, candidate, current, drops)
    if too_much:
        listed = ", ".join(f"{d} -{v:.2f}" for d, v in sorted(too_much.items()))
        reason = f"{metric} gains {gain:+.2f} but kept domain(s) drop more than {gate.max_domain_drop:.2f}: {listed}"
        return Decision(False, reason, metric, candidate, current, drops)
    reason = f"{metric} {where} {candidate:.2f} vs champion v{champion_version} {current:.2f} ({gain:+.2f})"
    return Decision(True, reason, metric, candidate, current, drops)


def _value(body: EvalReport, model: str, metric: str, domain: str) -> float:
    if domain and domain not in body.domains:
        raise ValueError(f"gate.domain={domain!r} is not an eval domain ({sorted(body.domains)})")
    source = body.domains[domain][model] if domain else body.mean[model]
    if metric not in source:
        raise ValueError(f"gate.metric={metric!r} is not among the measured metrics {sorted(source)}")
    return float(source[metric])
