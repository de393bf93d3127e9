"""An LLM for service tests: the offline provider, plus what a test needs to steer it."""

from __future__ import annotations

import asyncio

from contracts.domain import PersonaDraft, TemplateData
from services.adapters.llm.base import Answer, GeneratedText, LLMError, PromptBrief
from services.adapters.llm.offline import OfflineProvider


class ScriptedProvider:
    """Writes prompts as the offline provider does, except that it refuses the personas in
    ``refuse`` (a permanent failure), raises an unexpected error for those in ``crash``, holds
    every prompt while :meth:`hold` is in force, and counts the prompts it was asked for (and
those cancelled while held)."""

    name = "offline"  # as far as the caps go: nothing to limit

    def __init__(self) -> None:
        self._offline = OfflineProvider()
        self.model = self._offline.model
        self.refuse: set[str] = set()
        self.crash: set[str] = set()  # personas whose prompt raises what no provider should (a bug)
        self.prompt_calls = 0
        self.cancelled_calls = 0
        self.personas_asked: list[list[str]] = []  # the ids of each generate_personas call
        self._open = asyncio.Event()
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def analyze_scenario(self, document: str) -> Answer[TemplateData]:
        return await self._offline.analyze_scenario(document)

    async def generate_personas(
        self, template: TemplateData, persona_type: str, seeds: list[str]
    ) -> Answer[list[PersonaDraft]]:
        self.personas_asked.append(list(seeds))
        return await self._offline.generate_personas(template, persona_type, seeds)

    async def write_system_prompt(self, brief: PromptBrief) -> GeneratedText:
        self.prompt_calls += 1
        try:
            await self._open.wait()
        except asyncio.CancelledError:
            self.cancelled_calls += 1
            raise
        if brief.persona is not None and brief.persona.id in self.refuse:
            raise LLMError("llm_rejected", f"the model refused to write {brief.persona.name}'s prompt")
        if brief.persona is not None and brief.persona.id in self.crash:
            raise RuntimeError("connect to mongodb://admin:hunter2@10.0.0.7 failed")
        return await self._offline.write_system_prompt(brief)

    async def check(self) -> None:
        await self._offline.check()

    async def aclose(self) -> None:
        return None
