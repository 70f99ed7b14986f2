"""A policy's gates against an evaluation (and a replay): one row per gate, pure.

Each row is `{"gate", "value", "threshold", "passed"}` with the value and threshold as
text a person reads in a table; `gate` names exactly what failed ("metrics.roc_auc
[region=eu]", "latency.one_row_p95_ms", "signature", "replay.agreement").
"""

from __future__ import annotations

from typing import Any

from shipyard.promotion.policy import MetricThreshold, PromotionPolicy

Gate = dict[str, Any]


def check_gates(
    policy: PromotionPolicy, evaluation: dict[str, Any] | None, replay: dict[str, Any] | None
) -> list[Gate]:
    gates: list[Gate] = []
    if evaluation is not None:
        gates += _metric_gates(policy, evaluation)
        gates += _latency_gates(policy, evaluation)
        gates += _memory_gates(policy, evaluation)
        gates += _signature_gates(policy, evaluation)
        gates += _data_gates(policy, evaluation)
        gates += _disagreement_gates(policy, evaluation)
    if policy.replay is not None:
        gates += _replay_gates(policy, replay)
    return gates


def passed(gates: list[Gate]) -> bool:
    return all(gate["passed"] for gate in gates)


def failures(gates: list[Gate]) -> str:
    """The failed gates in one line, for reasons and webhooks."""
    return "; ".join(f"{g['gate']} {g['value']} (needed {g['threshold']})"
                     for g in gates if not g["passed"])  # fmt: skip


def _gate(name: str, value: str, threshold: str, ok: bool) -> Gate:
    return {"gate": name, "value": value, "threshold": threshold, "passed": bool(ok)}


def _metric_gates(policy: PromotionPolicy, evaluation: dict[str, Any]) -> list[Gate]:
    metrics = evaluation.get("metrics") or {}
    gates = []
    for name, threshold in policy.metrics.items():
        better = policy.greater_is_better(name)
        gates.append(_one_metric(f"metrics.{name}", name, threshold, better,
                                 metrics.get("candidate") or {},
                                 metrics.get("champion")))  # fmt: skip
        if threshold.per_slice:
            for piece in evaluation.get("slices") or []:
                gates.append(_one_metric(
                    f"metrics.{name}[{evaluation['data'].get('slice_by')}={piece['value']}]",
                    name, threshold, better, piece.get("candidate") or {},
                    piece.get("champion"),
                ))  # fmt: skip
    return gates


def _one_metric(
    gate: str, name: str, threshold: MetricThreshold, better: bool,
    candidate: dict[str, Any], champion: dict[str, Any] | None,
) -> Gate:  # fmt: skip
    value = candidate.get(name)
    if value is None:
        return _gate(gate, "undefined", "a value (the metric could not be computed)", False)
    value = float(value)
    checks: list[tuple[str, bool]] = []
    if threshold.min is not None:
        checks.append((f">= {threshold.min:g}", value >= threshold.min))
    if threshold.max is not None:
        checks.append((f"<= {threshold.max:g}", value <= threshold.max))
    shown = f"{value:.4g}"
    base = None if champion is None else champion.get(name)
    if base is not None and (threshold.min_change is not None
                             or threshold.min_relative_change is not None):  # fmt: skip
        base = float(base)
        gain = (value - base) if better else (base - value)
        shown += f" (champion {base:.4g}, {'+' if gain >= 0 else ''}{gain:.4g})"
        if threshold.min_change is not None:
            checks.append((f"change >= {threshold.min_change:+g}", gain >= threshold.min_change))
        if threshold.min_relative_change is not None:
            relative = gain / abs(base) if base else 0.0
            checks.append((f"relative change >= {threshold.min_relative_change:+.1%}",
                           relative >= threshold.min_relative_change))  # fmt: skip
    elif threshold.min_change is not None or threshold.min_relative_change is not None:
        shown += " (no champion: change not compared)"
    return _gate(gate, shown, "; ".join(text for text, _ in checks) or "any",
                 all(ok for _, ok in checks))  # fmt: skip


def _latency_gates(policy: PromotionPolicy, evaluation: dict[str, Any]) -> list[Gate]:
    budget = policy.latency
    if budget is None:
        return []
    latency = evaluation.get("latency") or {}
    candidate = latency.get("candidate") or {}
    gates = []
    for field in ("one_row_p95_ms", "batch32_p95_ms"):
        limit = getattr(budget, field)
        if limit is not None:
            value = float(candidate.get(field, float("inf")))
            gates.append(_gate(f"latency.{field}", f"{value:.2f} ms", f"<= {limit:g} ms",
                               value <= limit))  # fmt: skip
    champion = latency.get("champion")
    if budget.max_ratio is not None and champion:
        value = float(candidate.get("one_row_p95_ms", float("inf")))
        base = max(float(champion.get("one_row_p95_ms", 0.0)), 1e-6)
        ratio = value / base
        gates.append(_gate("latency.ratio", f"{ratio:.2f}x champion's one-row p95 "
                           f"({value:.2f} vs {base:.2f} ms)", f"<= {budget.max_ratio:g}x",
                           ratio <= budget.max_ratio))  # fmt: skip
    return gates


def _memory_gates(policy: PromotionPolicy, evaluation: dict[str, Any]) -> list[Gate]:
    if policy.memory is None:
        return []
    resources = (evaluation.get("resources") or {}).get("candidate") or {}
    used = float(resources.get("worker_memory_bytes", float("inf"))) / 2**20
    return [_gate("memory", f"{used:.0f} MiB", f"<= {policy.memory.max_mb:g} MiB",
                  used <= policy.memory.max_mb)]  # fmt: skip


def _signature_gates(policy: PromotionPolicy, evaluation: dict[str, Any]) -> list[Gate]:
    if policy.signature == "any":
        return []
    found = evaluation.get("signature") or {}
    breaking = list(found.get("breaking") or [])
    return [_gate("signature", "; ".join(breaking) or "compatible", "compatible with the "
                  "champion", bool(found.get("compatible", not breaking)))]  # fmt: skip


def _data_gates(policy: PromotionPolicy, evaluation: dict[str, Any]) -> list[Gate]:
    if policy.data_checks != "required":
        return []
    checks = evaluation.get("data_checks") or {}
    failed = [c for c in checks.get("checks") or [] if not c.get("passed")]
    shown = "; ".join(f"{c['check']} {c['feature']}: {c['detail']}".strip() for c in failed)
    return [_gate("data_checks", shown or "all passed", "every check passes",
                  bool(checks.get("passed", not failed)))]  # fmt: skip


def _disagreement_gates(policy: PromotionPolicy, evaluation: dict[str, Any]) -> list[Gate]:
    limit = policy.max_disagreement
    value = evaluation.get("disagreement")
    if limit is None or value is None:
        return []
    return [_gate("disagreement", f"{float(value):.3f}", f"<= {limit:g}", value <= limit)]


def _replay_gates(policy: PromotionPolicy, replay: dict[str, Any] | None) -> list[Gate]:
    gate = policy.replay
    assert gate is not None
    if replay is None:
        return [_gate("replay", "did not run", f"a replay of {gate.deployment}", False)]
    gates = []
    if gate.min_agreement is not None:
        agreement = replay.get("agreement")
        shown = "undefined" if agreement is None else (
            f"{agreement:.3f} over {replay.get('rows', 0)} rows")  # fmt: skip
        gates.append(_gate("replay.agreement", shown, f">= {gate.min_agreement:g}",
                           agreement is not None and agreement >= gate.min_agreement))  # fmt: skip
    if gate.max_error_rate is not None:
        rate = float(replay.get("error_rate", 1.0))
        gates.append(_gate("replay.error_rate", f"{rate:.3f}", f"<= {gate.max_error_rate:g}",
                           rate <= gate.max_error_rate))  # fmt: skip
    return gates
