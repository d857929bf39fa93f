"""The precomputed vectors shipped in vectors/ load by model name and carry their provenance."""

from __future__ import annotations

import personaspace as ps


def test_shipped_vectors_cover_every_builtin_trait():
    vs = ps.load_vectors("smollm2-135m-instruct")
    assert sorted(vs.traits) == ps.list_traits()
    assert (vs.n_layers, vs.d_model) == (30, 576)
    for trait in vs.traits:
        meta = vs[trait].meta
        assert meta.position == "response_avg" and meta.method == "mean_diff"
        assert meta.judge.startswith("offline:") and meta.n_kept >= 1
        assert meta.thresholds == {"pos_trait_min": 50.0, "neg_trait_below": 50.0, "coherence_min": 50.0}


def test_other_positions_are_shipped_too():
    last = ps.load_vectors("smollm2-135m-instruct", position="prompt_last")
    assert sorted(last.traits) == ps.list_traits()
