"""The platform key's one format rule, as the API and the CLI apply it."""

from __future__ import annotations

import pytest

from llmq.worker.secrets.platform_key import key_problem


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("1234:abc", None),
        ("app-1:k.e_y/=+", None),
        ("nocolon", "has no ':'"),
        (":abc", "has an empty half"),
        ("1234: ", "has an empty half"),
        ("1234:a:b", "has more than one ':'"),
        ("1234 :abc", "contains whitespace"),
        ("1234:ab\tc", "contains whitespace"),
        ("1234:abc\n", "contains whitespace"),
        ("1234:abc\u00a0", "contains whitespace"),  # no-break space
        ("1234:a\u3000bc", "contains whitespace"),  # ideographic space
        ("1234:abc\x1c", "contains whitespace"),  # a separator Python counts as whitespace
    ],
)
def test_key_problems(key: str, problem: str | None) -> None:
    assert key_problem(key) == problem
