"""Ingest: feed adapters that turn vendor payloads into canonical ``GameState`` snapshots, and the
differ that turns consecutive snapshots of a game into ``GameEvent`` values with stable ids.

Adapters are pure functions over bytes (no I/O), so pollers, tests and benchmarks drive them the
same way; a malformed payload raises :class:`goalhorn.errors.PayloadRejected`, and a malformed
game inside a good payload is reported beside the games that parsed.
"""
