"""goalhorn: notification fan-out and alerting for live sports.

Score and market-edge events become compact intents on priority queues, intents become
recipient batches, and batches go out through FCM, APNs and signed webhooks, each exactly once.
"""

__version__ = "0.1.0"
