"""Shared fixtures: a tiny random Llama with a tokenizer made in code (unit tier) and the embedded SmolLM2
model (integration tier)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Shape hints are contracts in the tests: every module of the package that takes its shape types from
# personaspace._util.shapes (the engine's capture and callbacks, ...) is loaded through jaxtyping's import
# hook, which wraps its functions and classes in a beartype check of their annotations -- a tensor of the
# wrong rank or dtype for a Float[Tensor, "tokens d_model"] argument, or dims that disagree between
# arguments, fails the call. The hook must be in place before those modules are first imported: here, at
# the top of the first conftest. Modules are opted in (not the whole engine) because beartype checks every
# hint of a module it wraps, and some engine hints (non-runtime Protocols) cannot be checked.
# PERSONASPACE_SHAPE_CHECKS=0 switches the checks off.
_ROOT = Path(__file__).resolve().parent.parent
SHAPE_CHECKED = sorted(
    ".".join(path.relative_to(_ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in (_ROOT / "personaspace").rglob("*.py")
    if "from personaspace._util.shapes import" in path.read_text(encoding="utf-8")
)
if os.environ.get("PERSONASPACE_SHAPE_CHECKS", "1") != "0":
    from jaxtyping import install_import_hook

    assert not set(SHAPE_CHECKED) & set(sys.modules), "shape-checked modules were imported before the hook"
    install_import_hook(SHAPE_CHECKED, "beartype.beartype")

# CLI output is read by tests: give rich consoles (created at import) a wide, fixed width.
os.environ.setdefault("COLUMNS", "200")

# One torch thread per test process: the suite runs as two xdist workers on two cores, and the small
# models here gain nothing from a second thread (on a busy machine oversubscription costs 5-10x).
torch.set_num_threads(1)


# A tokenizer built in code for the unit tier, so that it needs no model files: byte-level BPE (any text
# round-trips) trained in a fraction of a second on the shipped trait files, with SmolLM2's special tokens
# (same ids 0-2) and a ChatML chat template with a system role. Its vocabulary is then padded with seeded
# pseudo-words to a real model's size: no text encodes to them, but a tiny random model samples from them,
# as it would from a real vocabulary (with a small one it just repeats the prompt's last token). Saved and
# loaded back like a real tokenizer (TransformerLens reloads a tokenizer from its name_or_path).
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Words the tests write that the trait files lack, so that they are single tokens too.
TINY_EXTRA_TEXT = "<script> script hello world Hello World bye " * 4
TINY_SYLLABLES = "ka lo mi re tu sa ne po vi da gu fe zo ri ba chi ton mar el is".split()


def make_tiny_tokenizer(directory: Path, *, trained: int = 2048, vocab_size: int = 32768):
    import json
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    library = sorted((_ROOT / "personaspace" / "traits" / "library").glob("*.yaml"))
    corpus = [p.read_text(encoding="utf-8") for p in library] + [TINY_EXTRA_TEXT]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=trained,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    spec = json.loads(backend.to_str())
    vocab, rng = spec["model"]["vocab"], random.Random(0)
    while len(vocab) < vocab_size:  # "Ġ" is byte-level BPE's space: " kalomi", " tonbare", ...
        word = "\u0120" + "".join(rng.choice(TINY_SYLLABLES) for _ in range(rng.randint(2, 4)))
        vocab.setdefault(word, len(vocab))
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=TINY_CHAT_TEMPLATE,
    ).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A small tokenizer made in code (no model files): what the unit tier's tiny models use."""
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's tokenizer (converts the embedded model once into the cache if needed)."""
    from transformers import AutoTokenizer

    from personaspace.models import prepare

    return AutoTokenizer.from_pretrained(str(prepare("smollm2-135m-instruct")))


def make_tiny_llama(tokenizer, *, layers: int = 4, hidden: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    # Random init gives near-uniform logits; scale up so greedy choices are well separated.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from personaspace.engine import PersonaModel

    return PersonaModel.from_hf(make_tiny_llama(tiny_tokenizer), tiny_tokenizer, name="tiny-random-llama")


@pytest.fixture(scope="session")
def embedded_model():
    from personaspace.engine import PersonaModel

    return PersonaModel.load("smollm2-135m-instruct")


EMBEDDED_FIXTURES = {"embedded_model", "embedded_tokenizer"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        # tests/integration/*, and any test that asks for the embedded model or its tokenizer: the unit
        # tier (-m "not integration") runs without the embedded model's files.
        if "integration" in item.nodeid.split("/") or EMBEDDED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _written_html_opens_offline(tmp_path_factory):
    """After the session: no HTML file the suite wrote under its temporary directories loads anything
    from the network (scripts, stylesheets, fonts; see personaspace.viz.html.find_remote_loads)."""
    yield
    from personaspace.viz.html import find_remote_loads

    base = tmp_path_factory.getbasetemp()
    bad = {}
    for page in base.rglob("*.htm*"):
        if not page.is_file():
            continue
        found = find_remote_loads(page.read_text(encoding="utf-8", errors="replace"))
        if found:
            bad[str(page.relative_to(base))] = found[:3]
    assert not bad, f"HTML written by the suite loads from the network: {bad}"
