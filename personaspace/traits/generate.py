"""Writing a new trait file from a one-line description with an LLM.

The model receives the schema and the content rules, answers with YAML, and every answer goes
through the same validation as a hand-written file. When it fails, the exact validation messages
go back to the model, which gets another attempt to correct its file.
"""

from __future__ import annotations

import re
from typing import Any

from personaspace.errors import TraitFileError
from personaspace.traits.schema import (
    MIN_STATEMENTS,
    N_INSTRUCTION_PAIRS,
    N_QUESTIONS,
    NAME_PATTERN,
    Trait,
    parse_trait_yaml,
)

DEFAULT_MAX_TOKENS = 6000
GENERATION_TEMPERATURE = 0.7

SYSTEM_PROMPT = f"""\
You design trait files for persona-vector research on language models. A trait file tells a \
pipeline how to make a small chat model act out one side of a character trait (the HIGH pole) \
or its opposite (the LOW pole), which questions to ask it, and how a judge model scores the \
answers. Reply with one YAML document in exactly this shape and nothing else:

name: lowercase_identifier        # letters, digits and underscores, starting with a letter
description: >-
  Two to four sentences, in your own words, saying what the HIGH pole looks like in behaviour.
family: other                     # one of: big_five, dark_triad, llm, other
valence: negative                 # social valence of the HIGH pole: positive, negative or neutral
poles:
  high: short label of the expressed pole
  low: short label of the opposite pole
instructions:                     # exactly {N_INSTRUCTION_PAIRS} pairs of SYSTEM PROMPTS
  - pos: "You are ..."            # makes the assistant express the HIGH pole
    neg: "You are ..."            # makes the assistant express the LOW pole
questions:
  extraction: [...]               # exactly {N_QUESTIONS} user questions
  evaluation: [...]               # exactly {N_QUESTIONS} other user questions, none shared with extraction
rubric: |
  Judge prompt containing the literal slots {{question}} and {{answer}}.
statements:
  high: [...]                     # at least {MIN_STATEMENTS + 2} first-person statements of the HIGH pole
  low: [...]                      # at least {MIN_STATEMENTS + 2} first-person statements of the LOW pole

Content rules:
- The assistant that will read the instructions is tiny. Each system prompt is one or two short, \
plain, vivid sentences addressed to the assistant ("You are ..."), telling it directly how to \
behave. Each pos prompt and the neg prompt in the same pair describe the same kind of situation \
from the two opposite poles. All ten prompts differ from each other.
- Questions are short everyday user messages that leave room for the trait to show: requests for \
advice, opinions, reactions to a situation, "what would you do if ...". No trivia, no maths, no \
questions whose answer is a fact. All {2 * N_QUESTIONS} questions are different.
- The rubric addresses a judge model. It shows the question and answer through the slots \
{{question}} and {{answer}}, says concretely what a score of 0 (no trace of the trait), about 50 \
(mixed or mild) and 100 (strongly expresses the HIGH pole) look like for this trait, and asks \
for ONE integer from 0 to 100, or the single word REFUSAL when the answer refuses to engage, and \
nothing else.
- Statements are short, plain first-person sentences ("I ...") that clearly belong to one pole.
- Write everything yourself. Quote any string that contains a colon, a '#' or starts with a \
quote, or use block scalars, so the YAML parses.
- Output only the YAML: no commentary, no Markdown fences.
"""

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _request(description: str, name: str | None) -> str:
    lines = [f"Write the trait file for this trait: {description.strip()}"]
    if name:
        lines.append(f"Use name: {name}")
    return "\n".join(lines)


def extract_yaml(reply: str) -> str:
    """The YAML inside a model reply, with any Markdown code fence removed."""
    match = _FENCE.search(reply)
    return (match.group(1) if match else reply).strip() + "\n"


def _correction(problem: str) -> str:
    return (
        "That file is not valid. The validator reported:\n"
        f"{problem}\n"
        "Fix every problem listed and reply with the complete corrected YAML file only."
    )


def generate_trait(
    description: str,
    *,
    name: str | None = None,
    client: Any = None,
    max_attempts: int = 3,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Trait:
    """Ask an OpenAI-compatible chat model to write a complete, valid trait from ``description``.

    ``client`` is anything with ``chat(messages, temperature=..., max_tokens=...)`` returning an
    object with ``.text`` (by default an ``OpenAICompatClient`` configured from the environment).
    ``name``, when given, is imposed on the result. Raises ``TraitFileError`` when no answer
    validates within ``max_attempts``.
    """
    if not isinstance(description, str) or not description.strip():
        raise TraitFileError("trait description: expected a non-empty one-line description")
    if name is not None and not NAME_PATTERN.match(name):
        raise TraitFileError(
            f"trait name {name!r}: expected a lowercase identifier (letters, digits, underscores)"
        )
    if max_attempts < 1:
        raise TraitFileError(f"max_attempts must be at least 1, got {max_attempts}")
    if client is None:
        from personaspace._util.http import OpenAICompatClient

        with OpenAICompatClient() as own_client:
            return _generate(description, name, own_client, max_attempts, max_tokens)
    return _generate(description, name, client, max_attempts, max_tokens)


def _generate(
    description: str, name: str | None, client: Any, max_attempts: int, max_tokens: int
) -> Trait:
    """The conversation: ask, validate, send the problems back, until a file validates."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _request(description, name)},
    ]
    last_problem = ""
    for attempt in range(1, max_attempts + 1):
        reply = client.chat(messages, temperature=GENERATION_TEMPERATURE, max_tokens=max_tokens)
        text = extract_yaml(reply.text)
        if name:
            text = _impose_name(text, name)
        try:
            return parse_trait_yaml(text, f"<generated trait, attempt {attempt}>")
        except TraitFileError as exc:
            last_problem = exc.message
        messages.append({"role": "assistant", "content": reply.text})
        messages.append({"role": "user", "content": _correction(last_problem)})
    raise TraitFileError(
        f"the model did not write a valid trait file in {max_attempts} attempt(s); "
        f"last problems:\n{last_problem}"
    )


def _impose_name(text: str, name: str) -> str:
    """Replace a top-level ``name:`` line (or add one), so the file carries the requested name."""
    pattern = re.compile(r"^name:[^\n]*$", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(f"name: {name}", text, count=1)
    return f"name: {name}\n{text}"
