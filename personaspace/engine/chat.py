"""Chat formatting: (system, user, assistant) turns to prompt token ids, for any tokenizer.

- Templates without a system role (Gemma's, for instance) either raise or silently drop the system
  message; both are detected and the system prompt is folded into the first user turn instead.
- Templates with a thinking switch (Qwen3's ``enable_thinking``) get thinking **off** by default: the
  generation prompt then ends with an empty ``<think></think>`` block and the answer follows it
  directly, so what is generated and captured is the answer. ``ChatFormatter(tok, thinking=True)``
  (``PersonaModel.load(..., thinking=True)``, ``model.thinking = True``) keeps the model's thinking.
- Templates write their own BOS where the model wants one (Llama 3, Gemma, Mistral): the rendered
  text is tokenised without adding special tokens, so there is exactly one BOS (as Hugging Face's
  ``apply_chat_template(tokenize=True)`` does).
- Base models without any chat template get a plain ``System:/User:/Assistant:`` layout (and the
  tokenizer's BOS).

The prompt ends with the assistant header; an answer is tokenised on its own and appended, so the
response tokens are exactly the answer's (:meth:`PersonaModel.response_ids`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

_MARKER = "zq7-system-probe-zq7"


@dataclass(frozen=True)
class Chat:
    """One prompt: an optional system prompt, earlier turns, and the user message to answer."""

    user: str
    system: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # earlier (user, assistant) turns

    def messages(self) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in self.history:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": self.user})
        return msgs


PromptLike = Union[str, Chat, Mapping[str, Any], Sequence[int]]


def as_chat(prompt: PromptLike, system: str | None = None) -> Chat | list[int]:
    """Normalise a user string, a ``{"system", "user"}`` mapping, a Chat, or raw token ids."""
    if isinstance(prompt, Chat):
        return prompt
    if isinstance(prompt, str):
        return Chat(user=prompt, system=system)
    if isinstance(prompt, Mapping):
        return Chat(user=prompt["user"], system=prompt.get("system", system))
    if isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    raise TypeError(f"Cannot use {type(prompt).__name__} as a prompt; pass a string, a Chat, a mapping or token ids.")


class ChatFormatter:
    """Turns :class:`Chat` objects into prompt token ids for one tokenizer.

    ``thinking``: keep a reasoning model's thinking (templates with an ``enable_thinking`` switch,
    Qwen3); off by default. Ignored by templates without the switch.
    """

    def __init__(self, tokenizer: Any, *, thinking: bool = False):
        self.tokenizer = tokenizer
        self.thinking = bool(thinking)
        template = getattr(tokenizer, "chat_template", None)
        self.has_template = bool(template)
        self.thinking_switch = self.has_template and "enable_thinking" in str(template)
        self.system_role = self.has_template and self._supports_system()

    def _supports_system(self) -> bool:
        try:
            text = self._render([{"role": "system", "content": _MARKER}, {"role": "user", "content": "hi"}])
        except Exception:
            return False
        return _MARKER in text

    def template_kwargs(self) -> dict[str, Any]:
        """Extra variables for the chat template: the thinking switch where the template has one."""
        return {"enable_thinking": self.thinking} if self.thinking_switch else {}

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False, **self.template_kwargs()
        )

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The template applied to ``messages`` (role/content dicts) as the engine applies it everywhere:
        a system message folded into the first turn where the template has no system role, and the
        thinking switch set. Fine-tuning renders conversations with it, so that the prompt part of a
        training row is what generation feeds the model."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if msgs and msgs[0]["role"] == "system" and not self.system_role:
            system = msgs.pop(0)["content"]
            if msgs:
                msgs[0] = {"role": msgs[0]["role"], "content": f"{system}\n\n{msgs[0]['content']}"}
            else:
                msgs = [{"role": "user", "content": system}]
        return self._render(msgs, add_generation_prompt)

    def text(self, chat: Chat) -> str:
        if not self.has_template:
            lines = [f"System: {chat.system}"] if chat.system else []
            for u, a in chat.history:
                lines += [f"User: {u}", f"Assistant: {a}"]
            lines += [f"User: {chat.user}", "Assistant:"]
            return "\n".join(lines) + " "
        return self.render(chat.messages())

    def ids(self, prompt: PromptLike, system: str | None = None) -> list[int]:
        chat = as_chat(prompt, system)
        if isinstance(chat, list):
            return chat
        text = self.text(chat)
        add_special = not self.has_template  # templates write their own BOS where the model wants one
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])
