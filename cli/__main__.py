"""`llmq`: the command-line client."""

import sys


def main() -> int:
    print("llmq: not built yet", file=sys.stderr)
    return 2
