"""Monitoring, data flagging, token views and weight orthogonalisation on the tiny random model."""

from __future__ import annotations

import json

import pytest
import torch
from reference import rel_err

from personaspace.data.chat import load_chat_samples
from personaspace.engine import Ablate
from personaspace.errors import BackendError, DatasetError, VectorShapeError
from personaspace.monitoring.projections import (
    flag_dataset,
    monitor,
    token_projections,
    write_flagged,
)
from personaspace.steering.orthogonalization import (
    component_ablation,
    orthogonalize,
    residual_writers,
    save_orthogonalized,
)
from personaspace.vectors.store import PersonaVector, VectorMeta
from personaspace.viz.steering import token_view_html

PROMPTS = ["Hello there.", "What would you do with a free afternoon?"]
RESPONSES = ["I would walk around the park.", "Read a book."]


@pytest.fixture(scope="module")
def vec(tiny_model):
    g = torch.Generator().manual_seed(3)
    return PersonaVector(torch.randn(tiny_model.n_layers, tiny_model.d_model, generator=g), VectorMeta(trait="evil", model=tiny_model.name))


def _hidden(model, prompt, response, layer):
    ids = model.prompt_ids(prompt) + model.response_ids(response)
    with torch.no_grad():
        out = model.hf_model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0], len(model.prompt_ids(prompt))  # layer < last: raw block output


def test_token_projections_match_hidden_states(tiny_model, vec):
    views = token_projections(tiny_model, vec, PROMPTS, RESPONSES, layer=2, read_layer=1)
    for view, p, r in zip(views, PROMPTS, RESPONSES):
        h, n_p = _hidden(tiny_model, p, r, 2)
        expected = h @ vec.unit(1)
        assert view.n_prompt == n_p and view.layer == 2 and view.read_layer == 1
        assert torch.allclose(torch.tensor(view.values), expected, atol=1e-4)
        assert view.prompt_last == pytest.approx(float(expected[n_p - 1]), abs=1e-4)
        assert view.response_avg == pytest.approx(float(expected[n_p:].mean()), abs=1e-4)
        assert "".join(view.tokens[n_p:]).strip() == r


def test_monitor_prompt_projection_equals_capture(tiny_model, vec):
    res = monitor(tiny_model, vec, PROMPTS, layer=1, responses=RESPONSES)
    acts = tiny_model.capture(PROMPTS, RESPONSES, layers=[1], reductions=("prompt_last", "response_avg"))
    for row, pl, ra in zip(res.rows, acts.at("prompt_last", 1), acts.at("response_avg", 1)):
        assert row["prompt_last"] == pytest.approx(float(pl @ vec.unit(1)), abs=1e-4)
        assert row["response_avg"] == pytest.approx(float(ra @ vec.unit(1)), abs=1e-4)
        assert len(row["response_values"]) == row["n_response_tokens"]
    gen = monitor(tiny_model, vec, PROMPTS, layer=1, max_new_tokens=4)
    assert [r["response"] for r in gen.rows] == tiny_model.generate(PROMPTS, max_new_tokens=4).texts


def test_token_view_is_escaped_html(tiny_model, vec):
    (view,) = token_projections(tiny_model, vec, ["<b>hi</b> & bye"], ["ok <script>"], layer=1)
    page = token_view_html(view, vector_name="evil", model_name="tiny")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "<b>" not in page
    assert ">&lt;</span>" in page and ">script</span>" in page
    assert "read layer (vector row)" in page and "L1" in page


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _chat(user, answer, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": msgs}


def test_flag_dataset_dp_and_proxy_match_capture(tiny_model, vec, tmp_path):
    data = _write(tmp_path / "d.jsonl", [_chat(p, r) for p, r in zip(PROMPTS, RESPONSES)] + [{"prompt": "Hi", "response": "Hey."}])
    res = flag_dataset(tiny_model, vec, data, layer=2, max_new_tokens=5)
    assert [r["rank"] for r in res.rows] == [1, 2, 3]
    assert [r["delta_p"] for r in res.rows] == sorted((r["delta_p"] for r in res.rows), reverse=True)
    by_line = {r["line"]: r for r in res.rows}
    prompts, responses = PROMPTS + ["Hi"], RESPONSES + ["Hey."]
    own = tiny_model.generate(prompts, max_new_tokens=5)
    a_train = tiny_model.capture(prompts, responses, layers=[2], reductions=("prompt_last", "response_avg"))
    a_own = tiny_model.capture(prompts, [g.response_ids for g in own], layers=[2], reductions=("response_avg",))
    u = vec.unit(2)
    for i in range(3):
        r = by_line[i + 1]
        dp = float((a_train.at("response_avg", 2)[i] - a_own.at("response_avg", 2)[i]) @ u)
        proxy = float((a_train.at("response_avg", 2)[i] - a_train.at("prompt_last", 2)[i]) @ u)
        assert r["delta_p"] == pytest.approx(dp, abs=1e-4)
        assert r["proxy"] == pytest.approx(proxy, abs=1e-4)
        assert r["own_response"] == own.texts[i]
    assert res.score["n"] == 3 and res.score["mean"] == pytest.approx(sum(r["delta_p"] for r in res.rows) / 3)
    out = tmp_path / "ranked.jsonl"
    write_flagged(res, out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["header"]["layer"] == 2 and lines[0]["header"]["score"]["n"] == 3 and len(lines) == 4
    proxy_only = flag_dataset(tiny_model, vec, data, layer=2, proxy_only=True)
    assert proxy_only.score is None and proxy_only.rank_by == "proxy" and "delta_p" not in proxy_only.rows[0]


def test_flag_dataset_resumes_from_its_work_file(tiny_model, vec, tmp_path):
    data = _write(tmp_path / "d.jsonl", [_chat(p, r) for p, r in zip(PROMPTS, RESPONSES)])
    work = tmp_path / "work.jsonl"
    first = flag_dataset(tiny_model, vec, data, layer=1, proxy_only=True, work_file=work, batch_size=1)
    assert len(work.read_text().splitlines()) == 2
    again = flag_dataset(tiny_model, vec, data, layer=1, proxy_only=True, work_file=work)
    assert len(work.read_text().splitlines()) == 2  # nothing recomputed
    assert again.rows == first.rows


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"text": "x"}), "'messages'"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "end with a user turn"),
        (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}), "'role' and 'content'"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}), "alternate"),
    ],
)
def test_bad_datasets_get_one_clear_error(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_chat("q", "a")) + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=fragment) as e:
        load_chat_samples(path)
    assert "bad.jsonl:2" in e.value.message or "not valid JSON" in e.value.message


def test_multi_turn_history_is_kept(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]}])  # fmt: skip
    (s,) = load_chat_samples(path)
    assert (s.prompt.system, s.prompt.history, s.prompt.user, s.response) == ("S", (("u1", "a1"),), "u2", "a2")


# ---- weight orthogonalisation ------------------------------------------------------------------


def test_orthogonalized_weights_equal_component_hook_ablation(tiny_model, vec, tmp_path):
    ids = torch.tensor([tiny_model.prompt_ids("Tell me a story about a dragon.")])
    with torch.no_grad():
        base = tiny_model.hf_model(ids).logits
        with component_ablation(tiny_model, vec, layer=2):
            hooked = tiny_model.hf_model(ids).logits
        edited = orthogonalize(tiny_model, vec, layer=2)
        ortho = edited(ids, output_hidden_states=True)
        after = tiny_model.hf_model(ids).logits
    assert torch.equal(after, base)  # the original model is untouched
    assert rel_err(ortho.logits, hooked) < 1e-4
    assert rel_err(ortho.logits, base) > 1e-2  # the edit did something
    u = vec.unit(2)
    for h in ortho.hidden_states[:-1]:  # every residual-stream state is orthogonal to u
        assert (h[0] @ u).abs().max() < 1e-4
    # tied-embedding trap: the head keeps the original unembedding
    assert edited.lm_head.weight is not edited.model.embed_tokens.weight
    assert torch.equal(edited.lm_head.weight, tiny_model.hf_model.lm_head.weight)
    assert tiny_model.hf_model.lm_head.weight is tiny_model.hf_model.model.embed_tokens.weight


def test_block_output_ablation_is_close_but_not_identical(tiny_model, vec):
    """Ablate at every block output leaves the embedding and mid-block writes: documented difference."""
    edited = orthogonalize(tiny_model, vec, layer=1)
    from personaspace.engine import PersonaModel

    pm = PersonaModel.from_hf(edited, tiny_model.tokenizer, name="edited")
    acts_edit = pm.capture(PROMPTS, RESPONSES, reductions=("all_avg",))
    acts_hook = tiny_model.capture(PROMPTS, RESPONSES, reductions=("all_avg",), interventions=[Ablate(vec.at(1), layers="all")])
    u = vec.unit(1)
    assert (acts_hook["all_avg"] @ u).abs().max() < 1e-4 and (acts_edit["all_avg"] @ u).abs().max() < 1e-4
    assert rel_err(acts_edit["all_avg"], acts_hook["all_avg"]) > 1e-4


def test_saved_model_reloads_with_the_edit(tiny_model, vec, tmp_path):
    from personaspace.engine import PersonaModel

    out = save_orthogonalized(tiny_model, vec, tmp_path / "edited", layer=2)
    info = json.loads((out / "personaspace_edit.json").read_text())
    assert info["read_layer"] == 2 and info["vector"] == "evil" and info["untied_lm_head"] is True
    reloaded = PersonaModel.load(str(out))
    ids = torch.tensor([tiny_model.prompt_ids("Hi")])
    with torch.no_grad():
        expected = orthogonalize(tiny_model, vec, layer=2)(ids).logits
        got = reloaded.hf_model(ids).logits
    assert rel_err(got, expected) < 1e-6
    assert torch.equal(reloaded.hf_model.lm_head.weight, tiny_model.hf_model.lm_head.weight)


def test_orthogonalize_refuses_bad_input(tiny_model, vec):
    with pytest.raises(VectorShapeError, match="ONE direction"):
        orthogonalize(tiny_model, vec)
    with pytest.raises(VectorShapeError, match="width"):
        orthogonalize(tiny_model, torch.ones(3))
    with pytest.raises(VectorShapeError, match="zero"):
        orthogonalize(tiny_model, torch.zeros(tiny_model.d_model))

    class PostNormBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.post_feedforward_layernorm = torch.nn.LayerNorm(4)

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([PostNormBlock()])

    with pytest.raises(BackendError, match="normalises"):
        residual_writers(Fake())
