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


SHIPPED = ("smollm2-135m-instruct", "gemma3-270m")


def test_shipped_vectors_record_no_machine_paths():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "vectors"
    for model in SHIPPED:
        for sidecar in (root / model).rglob("*.json"):
            text = sidecar.read_text()
            assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text and "/Users/" not in text, sidecar
        for trait in ps.load_vectors(model).traits:
            run_dir = ps.load_vectors(model)[trait].meta.extra.get("run_dir")
            assert run_dir is None or not Path(run_dir).is_absolute(), (model, trait, run_dir)


def test_shipped_set_is_self_contained_for_the_bootstrap():
    """Intervals from the shipped files alone: each response_avg vector carries its kept pairs' differences."""
    from personaspace.engine.layers import default_layer
    from personaspace.geometry import bootstrap
    from personaspace.geometry.space import pair_differences

    vs = ps.load_vectors("smollm2-135m-instruct")
    layer = default_layer(vs.n_layers)
    for trait in vs.traits:
        pairs = vs[trait].pairs
        assert pairs is not None and layer in pairs.layers and pairs.n_pairs == vs[trait].meta.n_kept, trait
    diffs = pair_differences(vs["evil"], [layer])
    assert diffs.shape == (vs["evil"].meta.n_kept, 1, vs.d_model)
    boot = bootstrap(vs, 20, [layer], seed=0, require=True)
    assert boot.fixed == [] and set(boot.n_pairs) == set(vs.traits)


def test_shipped_svv_and_svv_specs():
    from personaspace.geometry.valence import WithSVV
    from personaspace.vectors.store import VectorSet, vector_search_paths

    vs = ps.load_vectors("smollm2-135m-instruct")
    svv_dir = next(p for p in (d / "smollm2-135m-instruct" / "svv" for d in vector_search_paths()) if p.is_dir())
    shipped = VectorSet.load(svv_dir)
    assert {"svv_contrast", "svv_pc1", "svv_probe"} <= set(shipped.traits)
    derived = WithSVV(vs)["svv"]
    assert float(derived.cosine(shipped["svv_contrast"], 15)) > 0.9999
