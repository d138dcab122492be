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
        ("1234:" + "k" * 251, None),  # 256 characters: the longest key
        ("1234:" + "k" * 252, "is 257 characters long; the limit is 256"),
        ("1:" + "k" * 30_000_000, "is 30000002 characters long; the limit is 256"),
        ("1234:clé", "contains a character that is not printable ASCII (only '!' to '~')"),
        ("1234:ключ", "contains a character that is not printable ASCII (only '!' to '~')"),
        ("1234:abc\x7f", "contains a character that is not printable ASCII (only '!' to '~')"),
        ("1234:a\x00bc", "contains a character that is not printable ASCII (only '!' to '~')"),
        ("1234:a\x01bc", "contains a character that is not printable ASCII (only '!' to '~')"),
        ("Ã©:abc", "contains a character that is not printable ASCII (only '!' to '~')"),  # UTF-8 read as latin-1
    ],
)
def test_key_problems(key: str, problem: str | None) -> None:
    assert key_problem(key) == problem
