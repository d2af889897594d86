"""Live Activities (iOS) and Android live updates: who receives a game's score ticker.

The registry of push-to-start tokens, per-activity update tokens, Android live-update registrations
and per-game APNs broadcast channels (``registry``), the expansion of a ``live:<game_id>`` audience
into delivery batches (``audience``) and the channel lifecycle run by the fanout stage (``channels``).
Design: ``docs/live-activities.md``.
"""
