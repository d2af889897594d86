"""The rule-condition facts an event cannot tell alone: its team's win probability before and after it.

``win_prob_before`` and ``win_prob_after`` come from the win-probability model (``winprob.py``) at the
event's period and clock, with the scores just before the event and after it, for the side the
event is credited to. They are None for an event without a team, without the scores before it, or
in a league the model has no parameters for; so a rule that reads them never fires on a guess.
"""

from __future__ import annotations

from goalhorn.catalog.conditions import Value
from goalhorn.catalog.rules import Rule
from goalhorn.errors import ConfigError
from goalhorn.ingest.winprob import WinModel
from goalhorn.intents.rules import event_side
from goalhorn.models import GameEvent

WIN_FIELDS = frozenset({"win_prob_before", "win_prob_after"})


def need_win_facts(rules: tuple[Rule, ...]) -> bool:
    """Whether any rule's condition reads a win probability (the model is not run otherwise)."""
    return any(rule.when is not None and rule.when.fields & WIN_FIELDS for rule in rules)


class WinFacts:
    def __init__(self, model: WinModel) -> None:
        self.model = model

    def __call__(self, event: GameEvent) -> dict[str, Value]:
        side = event_side(event)
        if side is None or event.home_score_before is None or event.away_score_before is None:
            return {}
        try:
            params = self.model.table.lookup(event.league, event.sport)
        except ConfigError:  # a league or sport the model has no parameters for
            return {}
        before = self.model.predict(
            params, event.home_score_before, event.away_score_before, event.period, event.clock_s
        )
        after = self.model.predict(params, event.home_score, event.away_score, event.period, event.clock_s)
        return {
            "win_prob_before": round(before.home if side else before.away, 4),
            "win_prob_after": round(after.home if side else after.away, 4),
        }
