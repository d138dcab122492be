"""Benchmarks of llmq against the direct-client ceiling and a textbook Celery setup (`python -m llmq.bench`)."""
