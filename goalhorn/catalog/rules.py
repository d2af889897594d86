"""Alert rules as the catalog declares them: which event kinds, at what priority, for which segments,
with which template. ``goalhorn.intents.rules`` turns events into intents with them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from goalhorn.catalog.conditions import Condition, ConditionError, parse_condition
from goalhorn.catalog.located import Path, Problems
from goalhorn.catalog.segments import check_template
from goalhorn.catalog.templates import fields_for
from goalhorn.models import EventKind

RULE_KEYS = (
    "kinds",
    "priority",
    "segments",
    "template",
    "ttl_s",
    "collapse_key",
    "bypass_quiet_hours",
    "opt_in_required",
    "to_original_recipients",
    "when",
    "description",
)

NOT_A_RULE_KIND = "LIVE_UPDATE is no rule's kind: ingest sends Live Activity updates itself (GOALHORN_LIVE_ACTIVITIES)"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kinds: frozenset[EventKind]
    priority: int
    segments: tuple[str, ...]
    template: str
    ttl_s: int = 300
    collapse_key: str | None = None
    bypass_quiet_hours: bool = False
    opt_in_required: bool = False
    when: Condition | None = None
    """Only events whose facts make it true trigger the rule (``conditions.py``)."""
    to_original_recipients: bool = False
    """A ``SCORE_CORRECTION`` rule that goes to the devices the corrected alerts reached (and no one
    else), under each one's collapse key, instead of to segments of its own."""


def parse_rules(
    raw: Any,
    path: Path,
    problems: Problems,
    segments: Collection[str],
    templates: Collection[str],
    template_fields: Mapping[str, frozenset[str]] | None = None,
) -> tuple[Rule, ...]:
    """The valid rules; every problem is reported. ``templates`` are the declared template names,
    ``template_fields`` the fields each valid template uses: a rule's template may only use fields
    every intent of its kinds carries."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add(path, "rules must be a mapping of name -> rule")
        return ()
    rules = []
    for name, body in raw.items():
        where = (*path, name)
        if not isinstance(body, dict):
            problems.add(where, f"rule {name!r} must be a mapping")
            continue
        before = len(problems.found)
        for key in body:
            if key not in RULE_KEYS:
                problems.add((*where, key), f"unknown key {key!r} in rule {name!r} (expected {', '.join(RULE_KEYS)})")
        follows = body.get("to_original_recipients", False) is True
        for key in ("kinds", "priority", "template") if follows else ("kinds", "priority", "segments", "template"):
            if key not in body:
                problems.add(where, f"rule {name!r} needs {key}")
        if follows and "segments" in body:
            problems.add((*where, "segments"), "a to_original_recipients rule has no segments of its own")
        if follows and body.get("kinds") != [EventKind.SCORE_CORRECTION.value]:
            problems.add((*where, "kinds"), "a to_original_recipients rule takes kinds: [SCORE_CORRECTION]")
        kinds = body.get("kinds", [])
        if not isinstance(kinds, list) or not kinds:
            problems.add((*where, "kinds"), "kinds must be a non-empty list of event kinds")
            kinds = []
        for kind in kinds:
            if kind == EventKind.LIVE_UPDATE.value:
                problems.add((*where, "kinds"), NOT_A_RULE_KIND)
            elif kind not in EventKind.__members__:
                known = ", ".join(k for k in EventKind if k is not EventKind.LIVE_UPDATE)
                problems.add((*where, "kinds"), f"unknown event kind {kind!r} (known: {known})")
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            problems.add((*where, "priority"), f"priority {priority!r} is outside 0..9")
        names = body.get("segments", [])
        if not isinstance(names, list) or (not names and not follows):
            problems.add((*where, "segments"), "segments must be a non-empty list of segment names")
            names = []
        for segment in names:
            if segment not in segments:
                problems.add((*where, "segments"), f"unknown segment {segment!r}")
        template = body.get("template")
        if "template" in body and template not in templates:
            problems.add((*where, "template"), f"unknown template {template!r}")
        used = (template_fields or {}).get(template) if isinstance(template, str) else None
        known_kinds = [EventKind[k] for k in kinds if k in EventKind.__members__]
        if used is not None and known_kinds:
            carried = fields_for(known_kinds)
            for name in sorted(used - carried):
                lacking = ", ".join(k for k in known_kinds if name not in fields_for([k]))
                what = f"template {template!r} uses {{{name}}}, which {lacking} intents lack"
                problems.add((*where, "template"), what)
        ttl = body.get("ttl_s", 300)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            problems.add((*where, "ttl_s"), f"ttl_s {ttl!r} must be a positive number of seconds")
        collapse = body.get("collapse_key")
        if collapse is not None:
            check_template(str(collapse), (*where, "collapse_key"), problems, f"collapse_key {collapse!r}")
        for flag in ("bypass_quiet_hours", "opt_in_required", "to_original_recipients"):
            if not isinstance(body.get(flag, False), bool):
                problems.add((*where, flag), f"{flag} must be true or false")
        when = _condition(body.get("when"), (*where, "when"), problems) if "when" in body else None
        if len(problems.found) > before:
            continue
        rules.append(
            Rule(
                name=name,
                kinds=frozenset(EventKind[k] for k in kinds),
                priority=priority,
                segments=tuple(names),
                template=str(template),
                ttl_s=ttl,
                collapse_key=None if collapse is None else str(collapse),
                bypass_quiet_hours=body.get("bypass_quiet_hours", False),
                opt_in_required=body.get("opt_in_required", False),
                when=when,
                to_original_recipients=follows,
            )
        )
    return tuple(rules)


def _condition(raw: Any, where: Path, problems: Problems) -> Condition | None:
    if not isinstance(raw, str) or not raw.strip():
        problems.add(where, f'when must be a condition such as "period >= 4", not {raw!r}')
        return None
    try:
        return parse_condition(raw)
    except ConditionError as exc:
        problems.add(where, f"when {raw!r}: {exc}")
        return None
