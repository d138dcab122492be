"""The OpenAI-compatible face of llmq: error shape, key, environment, and its routes."""
