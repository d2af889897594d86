"""The delivery stage: dramatiq actors per provider queue, idempotent delivery, retries, dead letters."""
