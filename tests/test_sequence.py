from __future__ import annotations

from goalhorn.ingest.sequence import SequenceGate, dropped_count


def test_late_and_duplicate_sequences_are_dropped_and_counted_per_game() -> None:
    late, dup = dropped_count("seqtest", "late"), dropped_count("seqtest", "duplicate")
    gate = SequenceGate("seqtest")
    arrivals = [("a", (1, 1)), ("a", (3, 0)), ("b", (2, 0)), ("a", (3, 0)), ("a", (2, 5))]
    admitted = [gate.admit(game, key) for game, key in arrivals]
    assert admitted == [True, True, True, False, False]
    assert gate.admit("a", (3, 1))
    assert gate.dropped == {"late": 1, "duplicate": 1}
    assert dropped_count("seqtest", "late") == late + 1
    assert dropped_count("seqtest", "duplicate") == dup + 1


def test_the_gate_remembers_a_bounded_number_of_games() -> None:
    gate = SequenceGate("seqtest", max_games=2)
    for game in ("a", "b", "c"):
        gate.admit(game, (5,))
    assert gate.admit("a", (1,))
    assert not gate.admit("c", (1,))
