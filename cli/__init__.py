"""`llmq`: the command-line client of the llmq API."""

__version__ = "0.1.0"
