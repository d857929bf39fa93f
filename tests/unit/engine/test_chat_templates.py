"""Chat templates of six families, applied with the unit tier's tiny tokenizer: the prompt / response token
boundary is exact.

The templates below are small Jinja templates written here in the format of each family (not copies of
the real files): Llama 3 (BOS written by the template, header with a blank line, trimmed content),
ChatML as Qwen 2.5 writes it (default system prompt), Qwen 3 (a thinking switch; empty think block in
the last assistant turn), Gemma (no system role: it raises; ``model`` turns; trimmed), Mistral
(``[INST]``; BOS; no generation prompt; alternation enforced) and Phi-3 (``<|user|>``; the system
message silently dropped). Each family's tokenizer is the tiny tokenizer's vocabulary with the family's
special tokens added; Llama 3 and Qwen get their pre-tokenizer rule (runs of newlines are one piece) and a
``"\n\n"`` token, as their real vocabularies have (with the tiny tokenizer's GPT-2 rule, ``"\n\n"`` before
an answer would split differently from ``"\n\n"`` at the end of a prompt), and the Llama 3 one adds a BOS
of its own when asked for special tokens, as the real one does.

For each family and answer: the prompt ids are what ``apply_chat_template(tokenize=True)`` gives, with
exactly one BOS where the template writes it; tokenising prompt + answer together gives the prompt ids
as a prefix and then exactly the answer's own ids (what capture appends), which decode to the answer;
capture counts exactly those tokens as the response; and the template's rendering of the answered
conversation continues the prompt with the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from conftest import make_tiny_llama

from personaspace.engine import Chat, PersonaModel
from personaspace.engine.chat import ChatFormatter

# Pre-tokenizer rules of the Llama 3 and Qwen 2 tokenizers (byte-level BPE after this split).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
QWEN_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN3 = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "{% if loop.last %}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    template: str
    bos: str | None  # written by the template (None: no BOS)
    eos: str
    specials: tuple[str, ...]
    header: str  # how the prompt text ends (thinking off)
    split: str | None = None  # the family's pre-tokenizer rule (None: the tiny tokenizer's GPT-2 rule)
    system_role: bool = True
    trims: bool = False  # the template strips message content
    tokenizer_adds_bos: bool = False  # the tokenizer's own post-processor adds a BOS (Llama 3)
    extra: dict = field(default_factory=dict)


FAMILIES = {
    "llama3": Family(LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                     "<|start_header_id|>assistant<|end_header_id|>\n\n", LLAMA3_SPLIT, trims=True, tokenizer_adds_bos=True),
    "chatml-qwen2.5": Family(CHATML, None, "<|im_end|>", ("<|im_start|>", "<|im_end|>"), "<|im_start|>assistant\n", QWEN_SPLIT),
    "qwen3": Family(QWEN3, None, "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<think>", "</think>"),
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n", QWEN_SPLIT),
    "gemma": Family(GEMMA, "<bos>", "<end_of_turn>", ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<start_of_turn>model\n",
                    system_role=False, trims=True),
    "mistral": Family(MISTRAL, "<s>", "</s>", ("<s>", "</s>", "[INST]", "[/INST]"), " [/INST]", system_role=False),
    "phi3": Family(PHI3, None, "<|end|>", ("<|user|>", "<|assistant|>", "<|end|>"), "<|assistant|>\n", system_role=False),
}  # fmt: skip

SYSTEM = "You are a pirate."
USER = "What is your favourite food?"
ANSWERS = ["Fish, of course.", " A leading space and two sentences. Then more.", "Lists:\n- one\n- two", "hello world", "Why?"]


def family_tokenizer(tiny, family: Family):
    import json

    from tokenizers import Regex, Tokenizer, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tiny.backend_tokenizer.to_str())
    if family.split is not None:  # a newline pair is one token, as in the real vocabularies ("\u010a" is "\n")
        vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
        vocab.setdefault("\u010a\u010a", max(vocab.values()) + 1)
        merges.insert(0, ["\u010a", "\u010a"] if isinstance(merges[0], list) else "\u010a \u010a")
    backend = Tokenizer.from_str(json.dumps(spec))
    if family.split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(family.split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    backend.add_special_tokens(list(family.specials))
    if family.tokenizer_adds_bos:
        bos = backend.token_to_id(family.bos)
        backend.post_processor = processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[(family.bos, bos)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=family.bos or "<|endoftext|>",
        eos_token=family.eos,
        pad_token=family.eos,
        unk_token="<|endoftext|>",
        chat_template=family.template,
    )
    assert all(len(tok(s, add_special_tokens=False)["input_ids"]) == 1 for s in family.specials)
    return tok


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_tokenizer):
    fam = FAMILIES[request.param]
    tok = family_tokenizer(tiny_tokenizer, fam)
    model = PersonaModel.from_hf(make_tiny_llama(tok, layers=1, hidden=32), tok, name=f"tiny-{request.param}")
    return request.param, fam, model


def _ids(out) -> list[int]:
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _folded(fam: Family) -> list[dict[str, str]]:
    if fam.system_role:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    return [{"role": "user", "content": f"{SYSTEM}\n\n{USER}"}]


def test_system_role_detected_and_folded(family):
    name, fam, model = family
    assert model.formatter.system_role is fam.system_role
    text = model.formatter.text(Chat(USER, system=SYSTEM))
    assert SYSTEM in text and USER in text
    if not fam.system_role:
        assert f"{SYSTEM}\n\n{USER}" in text  # folded into the first user turn


def test_prompt_ids_are_the_templates_with_one_bos(family):
    name, fam, model = family
    tok = model.tokenizer
    ids = model.prompt_ids(Chat(USER, system=SYSTEM))
    kwargs = model.formatter.template_kwargs()
    expected = _ids(tok.apply_chat_template(_folded(fam), add_generation_prompt=True, tokenize=True, **kwargs))
    assert ids == expected
    text = model.formatter.text(Chat(USER, system=SYSTEM))
    assert text.endswith(fam.header), (name, text[-60:])
    if fam.bos is None:
        assert tok.convert_tokens_to_ids(fam.bos or "<|endoftext|>") not in ids
    else:
        bos = tok.convert_tokens_to_ids(fam.bos)
        assert ids[0] == bos and ids.count(bos) == 1
    if fam.tokenizer_adds_bos:  # the trap: the tokenizer's own BOS on top of the template's
        assert _ids(tok(text)).count(tok.convert_tokens_to_ids(fam.bos)) == 2


@pytest.mark.parametrize("answer", ANSWERS)
def test_prompt_response_boundary_is_exact(family, answer):
    name, fam, model = family
    tok = model.tokenizer
    chat = Chat(USER, system=SYSTEM)
    prompt_text, prompt_ids = model.formatter.text(chat), model.prompt_ids(chat)
    response_ids = model.response_ids(answer)
    joint = _ids(tok(prompt_text + answer, add_special_tokens=False))
    assert joint[: len(prompt_ids)] == prompt_ids, name
    assert joint[len(prompt_ids) :] == response_ids, name
    assert tok.decode(response_ids) == answer
    # the template's rendering of the answered conversation continues the prompt with the answer
    messages = [*chat.messages(), {"role": "assistant", "content": answer}]
    full = model.formatter.render(messages, add_generation_prompt=False)
    assert full.startswith(prompt_text), name
    assert full[len(prompt_text) :].startswith(answer.strip() if fam.trims else answer), name


def test_capture_counts_exactly_the_answer_tokens(family):
    name, fam, model = family
    chat = Chat(USER, system=SYSTEM)
    acts = model.capture([chat] * len(ANSWERS), ANSWERS, layers=[0], reductions=["prompt_avg", "response_avg"])
    n_prompt = len(model.prompt_ids(chat))
    for i, answer in enumerate(ANSWERS):
        assert int(acts.counts["prompt_avg"][i]) == n_prompt
        assert int(acts.counts["response_avg"][i]) == len(model.response_ids(answer))


def test_generation_prompt_ends_at_the_answer(family):
    """Generated ids follow the prompt ids directly: the text decoded is the answer, nothing of the header."""
    name, fam, model = family
    out = model.generate([Chat(USER, system=SYSTEM)], max_new_tokens=4)
    g = out[0]
    assert g.prompt_ids == model.prompt_ids(Chat(USER, system=SYSTEM))
    assert g.text == model.tokenizer.decode(g.response_ids, skip_special_tokens=True)


def test_qwen3_thinking_off_by_default_and_kept_on_request(tiny_tokenizer):
    tok = family_tokenizer(tiny_tokenizer, FAMILIES["qwen3"])
    off, on = ChatFormatter(tok), ChatFormatter(tok, thinking=True)
    assert off.thinking_switch and off.template_kwargs() == {"enable_thinking": False}
    assert off.text(Chat(USER)).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.text(Chat(USER)).endswith("<|im_start|>assistant\n")
    # on a PersonaModel: an option at load / wrap time, and a property
    model = PersonaModel.from_hf(make_tiny_llama(tok, layers=1, hidden=32), tok, name="tiny-qwen3")
    assert model.thinking is False
    thinking = PersonaModel.from_hf(model.hf_model, tok, thinking=True)
    assert thinking.thinking and thinking.prompt_ids(USER) == _ids(tok(on.text(Chat(USER)), add_special_tokens=False))
    model.thinking = True
    assert model.prompt_ids(USER) == thinking.prompt_ids(USER)
    from personaspace.engine.model import with_backend

    assert with_backend(model, "hooks").thinking is True
    # earlier assistant turns lose their reasoning, as the template says; the last prompt is unchanged
    history = Chat(USER, history=((USER, "<think>\nhmm\n</think>\n\nFish."),))
    assert "hmm" not in off.text(history) and off.text(history).endswith("<think>\n\n</think>\n\n")


def test_templates_without_a_switch_get_no_extra_variables(tiny_tokenizer):
    for name in ("llama3", "gemma", "chatml-qwen2.5"):
        formatter = ChatFormatter(family_tokenizer(tiny_tokenizer, FAMILIES[name]), thinking=True)
        assert not formatter.thinking_switch and formatter.template_kwargs() == {}


@pytest.mark.parametrize("answer", ANSWERS[:2])
def test_training_rows_split_at_the_same_boundary(family, answer):
    """A fine-tuning row (personaspace.finetuning) renders through the same formatter: its context is the
    prompt ids generation uses, and its labelled part starts with the answer's own ids."""
    from personaspace.finetuning.train import IGNORE, encode_conversation

    name, fam, model = family
    chat = Chat(USER, system=SYSTEM)
    messages = [*chat.messages(), {"role": "assistant", "content": answer}]
    ids, labels = encode_conversation(model.tokenizer, model.formatter, messages, 512)
    prompt_ids = model.prompt_ids(chat)
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids and set(labels[:n]) == {IGNORE}, name
    response_ids = model.response_ids(answer.strip() if fam.trims else answer)
    assert ids[n : n + len(response_ids)] == response_ids == labels[n : n + len(response_ids)], name
