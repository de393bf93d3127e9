"""Chat messages for each task: plain functions from domain objects to messages.

They are the whole "prompt engineering" of promptgen, readable and testable
without a model. JSON tasks end with a ``JSON_SCHEMA_HINT`` line naming the
expected object, which the test LLM server understands.
"""

from __future__ import annotations

import json

from contracts.domain import Mode, Persona, TemplateData
from services.adapters.llm.base import Message

_TEMPLATE_SHAPE = {
    "title": "short title of the scenario",
    "description": "two or three sentences: what happens",
    "context": "background the participants know",
    "learning_objectives": ["what the learner should be able to do"],
    "roles": [{"name": "role name", "description": "who they are in the scenario"}],
    "success_criteria": ["what a good conversation achieves"],
}

_PERSONA_SHAPE = {
    "name": "full name",
    "age": 42,
    "role": "their role in the scenario",
    "archetype": "one word in capitals, e.g. PERSUASION, SKEPTIC, ANXIOUS",
    "detail_categories": {"background": "...", "motivations": "...", "concerns": ["..."],
                          "communication_style": "..."},
    "conversation_rules": {"opening": "...", "reveal_information": "...", "never": ["..."]},
}

MODE_GOALS: dict[Mode, str] = {
    "learn_mode": "teaches: the avatar is a coach who explains, demonstrates and checks understanding",
    "try_mode": "coaches: the avatar plays the persona for practice and may coach afterwards",
    "assess_mode": "evaluates: the avatar plays the persona faithfully and gives no hints",
}


def analyze_scenario_messages(document: str) -> list[Message]:
    return [
        {
            "role": "system",
            "content": (
                "You turn a training scenario document into a structured template for "
                "conversation practice with AI avatars. Answer with one JSON object of this "
                f"shape and nothing else:\n{json.dumps(_TEMPLATE_SHAPE, indent=2)}\n"
                "JSON_SCHEMA_HINT: template"
            ),
        },
        {"role": "user", "content": document},
    ]


def generate_personas_messages(template: TemplateData, persona_type: str, count: int) -> list[Message]:
    return [
        {
            "role": "system",
            "content": (
                "You invent realistic, distinct conversation partners (personas) for a training "
                "scenario. Answer with one JSON object {\"personas\": [...]} holding exactly "
                f"COUNT: {count}\npersonas, each of this shape:\n{json.dumps(_PERSONA_SHAPE, indent=2)}\n"
                "JSON_SCHEMA_HINT: personas"
            ),
        },
        {
            "role": "user",
            "content": f"Persona type: {persona_type}\nScenario template:\n{template.model_dump_json(indent=2)}",
        },
    ]


def learn_mode_messages(template: TemplateData) -> list[Message]:
    return [
        {
            "role": "system",
            "content": (
                "You write system prompts for AI avatars in conversation training. Write the "
                f"complete system prompt for an avatar that {MODE_GOALS['learn_mode']}. It must "
                "cover the scenario, the learning objectives, how to teach them step by step, and "
                "what a good conversation achieves. Answer with the system prompt only."
            ),
        },
        {"role": "user", "content": f"Scenario template:\n{template.model_dump_json(indent=2)}"},
    ]


def persona_prompt_messages(template: TemplateData, persona: Persona, mode: Mode) -> list[Message]:
    return [
        {
            "role": "system",
            "content": (
                "You write system prompts for AI avatars in conversation training. Write the "
                f"complete system prompt for an avatar that {MODE_GOALS[mode]}. The avatar IS the "
                "persona below: cover who they are, what they know and want, how they speak, the "
                "conversation rules, and how they react to the learner. Answer with the system "
                "prompt only, written in the second person (\"You are ...\")."
            ),
        },
        {
            "role": "user",
            "content": (
                f"Scenario template:\n{template.model_dump_json(indent=2)}\n\n"
                f"Persona:\n{persona.model_dump_json(indent=2, exclude={'template_id'})}"
            ),
        },
    ]
