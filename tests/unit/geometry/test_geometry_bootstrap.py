"""Bootstrap over kept pairs, read back from a hand-built extraction run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from personaspace._util.io import append_jsonl, write_json
from personaspace._util.stats import percentile_ci
from personaspace.errors import CorruptFileError, VectorShapeError
from personaspace.extraction.pipeline import ExtractionConfig, mean_difference
from personaspace.geometry import space as g
from personaspace.vectors.store import PairDifferences, PersonaVector, VectorMeta, VectorSet

LAYERS, D = 4, 16


def build_run(path, trait: str, n_pairs: int, shift: torch.Tensor, noise: float, seed: int, judged: bool = True):
    """A run dir like ``extract`` writes: pos rows carry ``shift``; pairs with odd index fail the judge."""
    gen = torch.Generator().manual_seed(seed)
    cfg = ExtractionConfig(trait=trait, model="toy", n_instructions=1, n_questions=n_pairs, judge="fake" if judged else "none")
    write_json(path / "config.json", {**cfg.__dict__, "key": cfg.key()})
    rows, scores = [], []
    acts = torch.zeros(2 * n_pairs, LAYERS, D)
    for side_i, side in enumerate(("pos", "neg")):
        for q in range(n_pairs):
            rid = side_i * n_pairs + q
            rows.append({"id": rid, "batch": 0, "side": side, "instruction": 0, "question": q, "sample": 0, "answer": "x"})
            acts[rid] = noise * torch.randn(LAYERS, D, generator=gen) + (shift if side == "pos" else 0)
            dropped = judged and q % 2 == 1
            trait_score = (80.0 if not dropped else 10.0) if side == "pos" else 5.0
            scores.append({"id": rid, "judge": "fake", "trait": trait_score, "coherence": 90.0})
    append_jsonl(path / "generations.jsonl", rows)
    append_jsonl(path / "scores.jsonl", scores)
    write_json(path / "summary.json", {"judge": "fake" if judged else "none"})
    (path / "activations").mkdir(parents=True)
    tensors = {p: acts.clone() for p in ("prompt_avg", "prompt_last", "response_avg")}
    tensors["row_ids"] = torch.arange(2 * n_pairs)
    save_file(tensors, str(path / "activations" / "batch-00000.safetensors"))
    kept = [(q, n_pairs + q) for q in range(n_pairs) if not (judged and q % 2 == 1)]
    meta = VectorMeta(trait=trait, model="toy", n_kept=len(kept), extra={"run_dir": str(path)})
    return PersonaVector(mean_difference(acts, kept), meta), kept


@pytest.fixture
def runs(tmp_path):
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, t in enumerate(["evil", "empathy", "humor"]):
        shift = torch.randn(LAYERS, D, generator=gen)
        (tmp_path / t).mkdir()
        out[t] = build_run(tmp_path / t, t, n_pairs=40, shift=shift, noise=1.0, seed=i)
    return out


def test_pair_differences_reselect_kept_pairs(runs):
    vec, kept = runs["evil"]
    diffs = g.pair_differences(vec)
    assert diffs.shape == (len(kept), LAYERS, D) and len(kept) == 20  # odd pairs failed the judge
    assert torch.allclose(diffs.mean(0), vec.data, atol=1e-5)
    part = g.pair_differences(vec, layers=[1, 3])
    assert torch.allclose(part, diffs[:, [1, 3]])


def test_bootstrap_replicates_are_centred_on_the_estimate(runs):
    vs = VectorSet([v for v, _ in runs.values()])
    boot = g.bootstrap(vs, 300, layers=[2], seed=1)
    assert boot.fixed == [] and boot.n_pairs == {"empathy": 20, "evil": 20, "humor": 20}
    reps = boot.replicates["evil"]  # [B, 1, D]
    assert reps.shape == (300, 1, D)
    est = vs["evil"].at(2)
    assert torch.allclose(reps.mean(0)[0], est, atol=0.1)
    # the replicate spread matches the standard error of a mean of 20 pairs (noise var 2 per coordinate)
    assert reps.std(0).mean().item() == pytest.approx((2.0 / 20) ** 0.5, rel=0.2)
    one = boot.set(0)
    assert one.layers == (2,) and one.traits == vs.traits
    ci = percentile_ci([g.cosine_matrix(s, 2)["evil", "humor"] for s in boot])
    assert ci[0] < g.cosine_matrix(vs, 2)["evil", "humor"] < ci[1]


def test_bootstrap_is_deterministic_and_mixes_fixed_traits(runs, tmp_path):
    free = PersonaVector(torch.randn(LAYERS, D), VectorMeta(trait="optimism", model="toy"))
    vs = VectorSet([v for v, _ in runs.values()] + [free])
    b1, b2 = g.bootstrap(vs, 20, [1], seed=5), g.bootstrap(vs, 20, [1], seed=5)
    assert b1.fixed == ["optimism"]
    assert torch.equal(b1.replicates["humor"], b2.replicates["humor"])
    assert torch.equal(b1.set(3)["optimism"].at(1), free.at(1))


def test_changed_run_is_detected(runs):
    vec, _ = runs["empathy"]
    run = vec.meta.extra["run_dir"]
    lines = [json.loads(x) for x in open(f"{run}/scores.jsonl")]
    for row in lines:
        row["trait"] = 80.0 if row["trait"] == 10.0 else row["trait"]  # now every pair passes
    with open(f"{run}/scores.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(CorruptFileError, match="do not reproduce"):
        g.pair_differences(vec)


def test_missing_run_dir_is_a_clear_error(runs):
    vec, _ = runs["humor"]
    moved = PersonaVector(vec.data, VectorMeta(trait="humor", model="toy", extra={"run_dir": "/nonexistent/run"}))
    with pytest.raises(g.PersonaspaceError, match="no readable extraction run"):
        g.pair_differences(moved)
    assert np.isnan(percentile_ci([])[0])


# ---- pair differences stored with the vector (what the shipped sets carry) ------------------


def self_contained(vec: PersonaVector, kept, layers) -> PersonaVector:
    """The vector with its kept pairs' differences at ``layers`` and no run directory."""
    diffs = g.pair_differences(vec)
    alone = PersonaVector(vec.data, VectorMeta(trait=vec.trait, model="toy", n_kept=len(kept)))
    alone.pairs = PairDifferences(tuple(range(LAYERS)), diffs).select(layers)
    return alone


def test_stored_pairs_survive_a_save_and_need_no_run_dir(runs, tmp_path):
    vec, kept = runs["evil"]
    alone = self_contained(vec, kept, [1, 2])
    back = PersonaVector.load(alone.save(tmp_path / "evil.response_avg"))
    sidecar = json.loads((tmp_path / "evil.response_avg.json").read_text())
    assert sidecar["pairs"] == {"tensor": "pair_differences", "dtype": "float16", "n_pairs": 20, "layers": [1, 2]}
    assert back.pairs is not None and back.pairs.data.dtype == torch.float16
    diffs = g.pair_differences(back, layers=[2])
    assert diffs.shape == (20, 1, D)
    assert torch.allclose(diffs.mean(0), back.data[[2]], atol=1e-6)  # float16 rounding removed from the mean
    assert torch.allclose(diffs, g.pair_differences(vec, layers=[2]), atol=1e-2)
    boot = g.bootstrap(VectorSet([back]), 50, layers=[2], seed=0, require=True)
    assert boot.n_pairs == {"evil": 20} and boot.fixed == []
    with pytest.raises(g.PersonaspaceError, match=r"cover layers \[1, 2\] only"):
        g.pair_differences(back, layers=[0])  # not stored, and no run directory to read it from


def test_stored_pairs_that_do_not_average_to_the_vector_are_refused(runs):
    vec, kept = runs["humor"]
    alone = self_contained(vec, kept, [0])
    tampered = PersonaVector(alone.data * 2, alone.meta)
    tampered.pairs = alone.pairs
    with pytest.raises(CorruptFileError, match="do not average"):
        g.pair_differences(tampered, layers=[0])


def test_pairs_must_fit_the_vector_and_derived_vectors_have_none(runs):
    vec, kept = runs["empathy"]
    alone = self_contained(vec, kept, [0, 3])
    with pytest.raises(VectorShapeError):
        alone.pairs = PairDifferences((0,), torch.zeros(3, 1, D + 1))
    assert PersonaVector(alone.data[[0]], alone.meta, layers=[0]).pairs is None


def test_sidecar_listing_missing_pairs_is_corrupt(runs, tmp_path):
    vec, kept = runs["evil"]
    path = self_contained(vec, kept, [1]).save(tmp_path / "v")
    js = tmp_path / "v.json"
    plain = PersonaVector(vec.data, VectorMeta(trait="evil", model="toy")).save(tmp_path / "w")
    sidecar = json.loads((tmp_path / "w.json").read_text())
    sidecar["pairs"] = json.loads(js.read_text())["pairs"]
    (tmp_path / "w.json").write_text(json.dumps(sidecar))
    with pytest.raises(CorruptFileError, match="holds none"):
        PersonaVector.load(plain)
    assert PersonaVector.load(path).pairs.layers == (1,)
