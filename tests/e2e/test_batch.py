"""POST /v1/jobs/batch through the real API and worker."""

from __future__ import annotations

from tests.stack import Stack, chat, wait_finished


def test_batch_queues_the_valid_jobs_and_explains_the_others(stack: Stack, model: str) -> None:
    jobs = [
        {"request": chat(model, "one")},
        {"request": {"model": model, "messages": []}},
        {"request": chat(model, "three"), "priority": "high"},
        {"request": chat(model, "four"), "max_attempts": 99},
        {"request": chat(model, "five"), "idempotency_key": f"five-{model}"},
    ]
    with stack.client() as client:
        response = client.post("/v1/jobs/batch", json={"jobs": jobs})
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (3, 2)
        assert [item["index"] for item in body["jobs"]] == [0, 1, 2, 3, 4]
        assert "request.messages" in body["jobs"][1]["error"]["message"]
        assert "max_attempts" in body["jobs"][3]["error"]["message"]
        accepted = [item for item in body["jobs"] if "id" in item]
        texts = [wait_finished(client, item["id"])["result"]["choices"][0]["message"]["content"] for item in accepted]
        assert texts == ["Echo: one", "Echo: three", "Echo: five"]

        again = client.post("/v1/jobs/batch", json={"jobs": [jobs[4]]}).json()
        assert again["jobs"][0]["id"] == body["jobs"][4]["id"] and again["jobs"][0]["replayed"] is True


def test_batch_limits(stack: Stack) -> None:
    with stack.client() as client:
        too_many = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat("m")}] * 1001})
        empty = client.post("/v1/jobs/batch", json={"jobs": []})
    assert too_many.status_code == 422 and "jobs" in too_many.json()["error"]["message"]
    assert empty.status_code == 422
