"""Local stand-ins for FCM, APNs and webhook receivers, for the demo, tests and benchmarks."""
