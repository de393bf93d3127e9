"""examples/consumer.py, the README's consumer for other services, run as its own process
against a real nats-server: it prints the log's prompts with their sequences, follows new
ones live, skips what it cannot read, and resumes from a sequence."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap

from contracts import subjects
from contracts.events import PersonaCompleted, PersonaProgress
from tests.conftest import repo_root

EXAMPLE = repo_root() / "examples" / "consumer.py"


def completed(job_id: str, persona_id: str) -> PersonaCompleted:
    prompt = f"You are {persona_id} of {job_id}.\nStay in character."
    return PersonaCompleted(job_id=job_id, persona_id=persona_id, persona_name=f"Name {persona_id}",
                            mode="try_mode", generation_mode="assess_mode", prompt=prompt,
                            prompt_length=len(prompt), provider="offline", model="m")


class Consumer:
    """The example as a child process, read one stdout line at a time."""

    def __init__(self, settings, *args: str) -> None:
        self.argv = [sys.executable, str(EXAMPLE), "--stream", settings.stream, *args]
        self.env = {**os.environ, "NATS_URL": settings.nats_url}

    async def __aenter__(self) -> Consumer:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, cwd=repo_root(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return self

    async def next_prompt(self) -> dict:
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        assert line, f"the consumer ended: {(await self.proc.stderr.read()).decode()[-2000:]}"
        return json.loads(line)

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 20)

    async def __aexit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def printed(seq: int, event: PersonaCompleted) -> dict:
    return {"seq": seq, "job_id": event.job_id, "persona_id": event.persona_id, "persona_name": event.persona_name,
            "mode": event.mode, "prompt_length": event.prompt_length, "prompt": event.prompt}


async def test_it_prints_the_logs_prompts_follows_live_and_resumes_from_a_sequence(settings, event_log):
    a1, a2, b1 = completed("job-a", "p1"), completed("job-a", "p2"), completed("job-b", "p1")
    seq = {"a1": await event_log.publish(a1)}
    await event_log.publish(PersonaProgress(job_id="job-a", persona_id="p2", persona_name="Name p2"))
    # On the subject it follows: bytes that are no event, and an event of a type it does not know.
    seq["junk"] = await event_log.publish_to(settings.stream, subjects.job_persona("job-a", "p9", "completed"),
                                             b"\xff not json")
    await event_log.publish_to(settings.stream, subjects.job_persona("job-a", "p8", "completed"),
                               json.dumps({"type": "persona.completed_v9", "job_id": "job-a"}).encode())
    seq["a2"] = await event_log.publish(a2)

    async with Consumer(settings) as consumer:
        assert await consumer.next_prompt() == printed(seq["a1"], a1)
        assert await consumer.next_prompt() == printed(seq["a2"], a2)
        seq["b1"] = await event_log.publish(b1)  # live, while it follows
        assert await consumer.next_prompt() == printed(seq["b1"], b1)
        assert await consumer.stop() == 0
        assert f"skipping seq {seq['junk']}: not JSON" in (await consumer.proc.stderr.read()).decode()

    # Resumed after the last prompt it handled: nothing before, nothing twice.
    b2 = completed("job-b", "p2")
    async with Consumer(settings, "--from-seq", str(seq["a2"] + 1)) as consumer:
        assert await consumer.next_prompt() == printed(seq["b1"], b1)
        seq["b2"] = await event_log.publish(b2)
        assert await consumer.next_prompt() == printed(seq["b2"], b2)
        assert await consumer.stop() == 0

    # One job only.
    async with Consumer(settings, "--job", "job-b") as consumer:
        assert [await consumer.next_prompt() for _ in range(2)] == [printed(seq["b1"], b1), printed(seq["b2"], b2)]
        a3 = completed("job-a", "p3")
        b3 = completed("job-b", "p3")
        await event_log.publish(a3)
        seq["b3"] = await event_log.publish(b3)
        assert await consumer.next_prompt() == printed(seq["b3"], b3)
        assert await consumer.stop() == 0


async def test_it_refuses_a_sequence_before_the_first(settings):
    async with Consumer(settings, "--from-seq", "0") as consumer:
        assert await asyncio.wait_for(consumer.proc.wait(), 20) == 2
        assert "--from-seq" in (await consumer.proc.stderr.read()).decode()


async def test_it_says_in_one_line_that_nats_cannot_be_reached(settings):
    from services.cli.embedded import free_port

    nowhere = settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{free_port()}"})
    async with Consumer(nowhere) as consumer:
        assert await asyncio.wait_for(consumer.proc.wait(), 30) == 1
        said = (await consumer.proc.stderr.read()).decode().strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"cannot reach NATS at {nowhere.nats_url}"), said


def test_the_readme_quotes_the_example_as_it_is():
    readme = (repo_root() / "README.md").read_text()
    section = readme.split("### Following the event log from another service\n", 1)[1]
    quoted = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert textwrap.indent(quoted, "    ") in EXAMPLE.read_text()
