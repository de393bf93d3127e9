"""The offline provider: no network, deterministic, and still useful.

It reads the structure a scenario document already has (a title, headed
sections, bullet lists) and composes complete system prompts from the template
and persona. Same inputs, same output: handy for tests, demos and benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re

from contracts.domain import PersonaDraft, Role, TemplateData, TokenUsage
from services.adapters.llm.base import Answer, GeneratedText, PromptBrief, approx_tokens

MODEL = "offline-composer-1"

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

_SECTION_KINDS = {
    "objectives": ("objective", "goal", "learn", "outcome", "aim"),
    "roles": ("role", "participant", "character", "who", "cast", "stakeholder"),
    "success": ("success", "criteria", "good conversation", "assessment", "evaluat", "rubric"),
    "context": ("context", "background", "situation", "setting"),
}


def _heading(line: str) -> str | None:
    """The name a heading line gives (``## Roles ##``, ``Roles:``), or None. String methods, not
    a regular expression: one that backtracks over a line's blanks took minutes on a few KB."""
    text = line.strip()
    if text.startswith("#"):
        name = text[min(len(text) - len(text.lstrip("#")), 6):].strip().rstrip("#").strip()
        return name or None
    if len(text) > 1 and text.endswith(":"):
        return text[:-1]
    return None


def _sections(document: str) -> tuple[str, dict[str, list[str]], list[str]]:
    """Split a document into (title, {kind: lines}, free paragraphs lines)."""
    lines = [ln.rstrip() for ln in document.splitlines()]
    non_empty = [ln for ln in lines if ln.strip()]
    title = re.sub(r"^#+\s*", "", non_empty[0]).strip() if non_empty else "Untitled scenario"
    if len(title) > 120:
        title = _SENTENCE.split(title)[0][:120].rstrip()
    found: dict[str, list[str]] = {k: [] for k in _SECTION_KINDS}
    prose: list[str] = []
    current: str | None = None
    for ln in lines[lines.index(non_empty[0]) + 1 :] if non_empty else []:
        if not ln.strip():
            continue
        heading = _heading(ln)
        bullet = _BULLET.match(ln)
        if heading is not None and not bullet:
            name = heading.lower()
            current = next((k for k, words in _SECTION_KINDS.items() if any(w in name for w in words)), None)
            continue
        text = bullet.group(1) if bullet else ln.strip()
        if current:
            found[current].append(text)
        else:
            prose.append(text)
    return title, found, prose


def _role(line: str) -> Role:
    """``Physician: delivers the news`` or ``Physician - delivers the news``."""
    parts = re.split(r"\s[-–—]\s|:\s", line, maxsplit=1)
    name, rest = (parts[0], parts[1]) if len(parts) == 2 else (line, "")
    return Role(name=name.strip()[:80], description=rest.strip())


def analyze_document(document: str) -> TemplateData:
    title, found, prose = _sections(document)
    sentences = [s for s in _SENTENCE.split(" ".join(prose) or document.strip()) if s]
    description = " ".join(sentences[:2]) or title
    context = " ".join(found["context"]) or " ".join(sentences[2:8])
    objectives = found["objectives"] or [
        s for s in sentences if re.search(r"\b(should|must|learn|practi[cs]e|able to)\b", s, re.I)
    ][:6]
    if not objectives:
        objectives = [f"Handle the conversation in '{title}' professionally and effectively."]
    roles = [_role(r) for r in found["roles"]] or [
        Role(name="Learner", description="The trainee practising the conversation."),
        Role(name="Counterpart", description="The person the learner talks to in the scenario."),
    ]
    success = found["success"] or [f"The learner can {o[0].lower()}{o[1:].rstrip('.')}" for o in objectives[:3]]
    return TemplateData(
        title=title,
        description=description,
        context=context,
        learning_objectives=objectives,
        roles=roles,
        success_criteria=success,
    )


# --- personas ----------------------------------------------------------------------------

_FIRST = ["Alex", "Maria", "Samuel", "Priya", "Jonas", "Amara", "Kenji", "Lucia", "Omar", "Grace",
          "Mateo", "Ingrid", "Tariq", "Hannah", "Wei", "Fatima", "Daniel", "Chloe", "Ravi", "Elena"]
_LAST = ["Smith", "Okafor", "Lindqvist", "Patel", "Moreau", "Tanaka", "Garcia", "Novak", "Haddad",
         "Brennan", "Kowalski", "Nguyen", "Rossi", "Adeyemi", "Schmidt", "Costa", "Ibrahim", "Walsh"]
_TITLES = ["", "", "", "Dr. "]
_ARCHETYPES = ["PERSUASION", "SKEPTIC", "ANXIOUS", "ANALYTICAL", "DEMANDING", "COOPERATIVE", "DEFENSIVE"]
_STYLES = {
    "PERSUASION": "warm but tries to steer the conversation towards their own preferred outcome",
    "SKEPTIC": "polite, questions every claim and asks for evidence",
    "ANXIOUS": "worried, needs reassurance and clear next steps",
    "ANALYTICAL": "precise, wants numbers, details and a logical structure",
    "DEMANDING": "impatient, time-pressed, expects quick and concrete answers",
    "COOPERATIVE": "open and friendly, but has real concerns that must be addressed",
    "DEFENSIVE": "feels criticised easily and pushes back when challenged",
}
_ESCALATES_TO = {"PERSUASION": "insistent", "SKEPTIC": "skeptical", "ANXIOUS": "anxious", "ANALYTICAL": "exacting",
                 "DEMANDING": "demanding", "COOPERATIVE": "guarded", "DEFENSIVE": "defensive"}
_CONCERNS = ["cost", "time pressure", "risk to their reputation", "lack of information",
             "past bad experiences", "impact on their team", "fairness of the decision"]


def draft_persona(template: TemplateData, persona_type: str, seed: str) -> PersonaDraft:
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    archetype = rng.choice(_ARCHETYPES)
    counterpart_roles = [
        r for r in template.roles
        if not re.search(r"\b(learner|trainee|you)\b", r.name, re.I)
        and not re.match(r"\s*(the\s+)?(learner|trainee)\b", r.description, re.I)
    ]
    role = rng.choice(counterpart_roles).name if counterpart_roles else persona_type.replace("_", " ").title()
    name = f"{rng.choice(_TITLES)}{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    concerns = rng.sample(_CONCERNS, 2)
    return PersonaDraft(
        name=name,
        age=rng.randint(24, 66),
        role=role,
        archetype=archetype,
        detail_categories={
            "background": f"{role} involved in '{template.title}'.",
            "motivations": f"Wants an outcome that protects their interests in {template.title.lower()}.",
            "concerns": concerns,
            "communication_style": _STYLES[archetype],
            "knowledge_level": rng.choice(["novice", "informed", "expert"]),
        },
        conversation_rules={
            "opening": "Wait for the learner to open the conversation; answer in character.",
            "stay_in_character": True,
            "reveal_information": f"Share details about {concerns[0]} only when asked open questions.",
            "escalation": f"Become more {_ESCALATES_TO[archetype]} if your concerns are dismissed.",
            "never": ["mention that you are an AI", "break the scenario", "solve the problem for the learner"],
        },
    )


# --- system prompts ------------------------------------------------------------------------

_MODE_BEHAVIOUR: dict[str, str] = {
    "learn_mode": (
        "You are a patient coach. Teach the learner how to handle this conversation: explain the "
        "key ideas, demonstrate good phrasing with short examples, check understanding with "
        "questions, and encourage them to try. Keep explanations concrete and tied to the objectives."
    ),
    "try_mode": (
        "Play the persona realistically so the learner can practise. Stay in character; after the "
        "conversation, if asked, give brief, kind coaching on what worked and what to try next."
    ),
    "assess_mode": (
        "Play the persona realistically and consistently. Do not give hints, coaching or feedback "
        "during the conversation; respond only as the persona would, so that the learner's own "
        "skill is what is assessed."
    ),
}


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {i}" for i in items) if items else "- (none given)"


def compose_system_prompt(brief: PromptBrief) -> str:
    t = brief.template
    parts = [f"# {t.title}", "", "## Scenario", t.description]
    if t.context:
        parts += ["", t.context]
    parts += ["", "## Learning objectives", _bullets(t.learning_objectives)]
    parts += ["", "## What a good conversation achieves", _bullets(t.success_criteria)]
    if brief.kind == "learn" or brief.persona is None:
        parts += ["", "## Roles in this scenario", _bullets([f"{r.name}: {r.description}" for r in t.roles])]
        parts += ["", "## Your role", _MODE_BEHAVIOUR["learn_mode"]]
        return "\n".join(parts).strip() + "\n"
    p = brief.persona
    d = p.detail_categories
    parts += [
        "",
        "## Who you are",
        f"You are {p.name}, {p.age}, {p.role}. Archetype: {p.archetype}.",
    ]
    parts += [f"- {k.replace('_', ' ').capitalize()}: {_flat(v)}" for k, v in d.items()]
    parts += ["", "## Conversation rules"]
    parts += [f"- {k.replace('_', ' ').capitalize()}: {_flat(v)}" for k, v in p.conversation_rules.items()]
    parts += ["", "## How to behave", _MODE_BEHAVIOUR[brief.mode]]
    return "\n".join(parts).strip() + "\n"


def _flat(value: object) -> str:
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _usage(prompt_chars: int, answer_chars: int) -> TokenUsage:
    """What a model would have counted for such a call, about."""
    return TokenUsage(prompt_tokens=approx_tokens(prompt_chars), completion_tokens=approx_tokens(answer_chars))


class OfflineProvider:
    name = "offline"
    model = MODEL

    async def analyze_scenario(self, document: str) -> Answer[TemplateData]:
        # A document of up to 200,000 characters: read in a thread, so the loop serves the rest
        template = await asyncio.to_thread(analyze_document, document)
        return Answer(template, MODEL, _usage(len(document), len(template.model_dump_json())))

    async def generate_personas(
        self, template: TemplateData, persona_type: str, seeds: list[str]
    ) -> Answer[list[PersonaDraft]]:
        drafts = [draft_persona(template, persona_type, seed) for seed in seeds]
        return Answer(drafts, MODEL, _usage(len(template.model_dump_json()),
                                            sum(len(d.model_dump_json()) for d in drafts)))

    async def write_system_prompt(self, brief: PromptBrief) -> GeneratedText:
        text = compose_system_prompt(brief)
        prompt_chars = sum(len(m["content"]) for m in brief.messages)
        return GeneratedText(text=text, model=MODEL, usage=_usage(prompt_chars, len(text)))

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

