"""Segments: from an intent's segment names to delivery batches of devices, streamed from Redis."""
