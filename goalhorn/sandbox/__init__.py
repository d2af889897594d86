"""Local stand-ins for FCM, APNs and webhook receivers, and recorded feed data (``data/``), for the
demo, tests and benchmarks. Production code paths never import this package."""
