"""Job ids: 128 random bits from the system's CSPRNG; a forked child never repeats its parent's."""

from __future__ import annotations

import multiprocessing
import re

from llmq.worker.jobs.record import JOB_ID_PREFIX, new_job_id

ID_PATTERN = re.compile(re.escape(JOB_ID_PREFIX) + r"[A-Za-z0-9_-]{22}")


def test_ids_are_url_safe_and_do_not_repeat_across_many_chunks() -> None:
    ids = [new_job_id() for _ in range(20_000)]
    assert all(ID_PATTERN.fullmatch(job_id) for job_id in ids)
    assert len(set(ids)) == len(ids)


def _next_ids(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put([new_job_id() for _ in range(3)])


def test_a_forked_child_draws_bytes_of_its_own() -> None:
    new_job_id()  # any state a faster generator kept would now be shared with the child
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_next_ids, args=(queue,))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(30)
    from_parent = [new_job_id() for _ in range(3)]
    assert child.exitcode == 0
    assert not set(from_child) & set(from_parent)
