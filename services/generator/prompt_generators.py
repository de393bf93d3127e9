"""The two prompt generators of the specification.

``learn_mode`` uses :class:`LearnModePromptGenerator` (template only);
``try_mode`` and ``assess_mode`` use :class:`SystemPromptGenerator` (template +
persona), which generates with mode ``assess_mode`` for both: one prompt per
persona, used twice.
"""

from __future__ import annotations

from contracts.domain import Mode, Persona, TemplateData, generation_mode
from services.adapters.llm import messages
from services.adapters.llm.base import GeneratedText, PromptBrief, Provider


class LearnModePromptGenerator:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    @staticmethod
    def brief(template_data: TemplateData) -> PromptBrief:
        return PromptBrief(
            kind="learn",
            mode="learn_mode",
            template=template_data,
            persona=None,
            messages=messages.learn_mode_messages(template_data),
        )

    async def generate_learn_prompt(self, template_data: TemplateData) -> GeneratedText:
        return await self.provider.write_system_prompt(self.brief(template_data))


class SystemPromptGenerator:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    @staticmethod
    def brief(template_data: TemplateData, persona_data: Persona, mode: Mode) -> PromptBrief:
        return PromptBrief(
            kind="persona",
            mode=mode,
            template=template_data,
            persona=persona_data,
            messages=messages.persona_prompt_messages(template_data, persona_data, mode),
        )

    async def generate_system_prompt(
        self, template_data: TemplateData, persona_data: Persona, mode: Mode = "assess_mode"
    ) -> GeneratedText:
        return await self.provider.write_system_prompt(self.brief(template_data, persona_data, mode))


async def generate_for_mode(
    provider: Provider, template: TemplateData, persona: Persona, mode: Mode
) -> GeneratedText:
    """The prompt for ``persona`` in the requested ``mode``."""
    if generation_mode(mode) == "learn_mode":
        return await LearnModePromptGenerator(provider).generate_learn_prompt(template)
    return await SystemPromptGenerator(provider).generate_system_prompt(
        template, persona, mode=generation_mode(mode)
    )
