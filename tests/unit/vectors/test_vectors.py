"""PersonaVector / VectorSet: numerics, file round trips, and one clear error per bad input."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from personaspace.errors import (
    CorruptFileError,
    LayerOutOfRangeError,
    UnknownTraitError,
    VectorShapeError,
    VectorsNotFoundError,
)
from personaspace.vectors.store import (
    ENV_VECTORS,
    LAYER_CONVENTION,
    PersonaVector,
    VectorMeta,
    VectorSet,
    load_vectors,
    random_like,
    vector_search_paths,
)


def make(trait="evil", n_layers=4, d=6, seed=0, model="toy-model", **meta) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(n_layers, d, generator=gen)
    return PersonaVector(data, VectorMeta(trait=trait, model=model, **meta))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONASPACE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ENV_VECTORS, raising=False)


# -- construction -----------------------------------------------------------------------------


def test_construction_copies_to_float32_cpu():
    src = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    v = PersonaVector(src, VectorMeta(trait="t", model="m"))
    assert v.data.dtype == torch.float32 and v.data.device.type == "cpu"
    assert (v.n_layers, v.d_model, v.layers, v.is_full) == (3, 4, (0, 1, 2), True)
    src[0, 0] = 99.0
    assert v.data[0, 0] == 0.0  # private copy


@pytest.mark.parametrize(
    "data",
    [torch.zeros(5), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(0, 3), "not a tensor"],
)
def test_bad_shapes_are_vector_shape_errors(data):
    with pytest.raises(VectorShapeError):
        PersonaVector(data, VectorMeta(trait="t", model="m"))


def test_non_finite_values_name_the_layer():
    data = torch.zeros(3, 4)
    data[2, 1] = float("nan")
    with pytest.raises(VectorShapeError, match=r"layer\(s\) \[2\]"):
        PersonaVector(data, VectorMeta(trait="t", model="m", n_kept=0))


def test_meta_as_dict_and_defaults():
    v = PersonaVector(torch.ones(2, 2), {"trait": "t", "model": "m", "brand_new_key": [1]})
    assert v.meta.extra == {"brand_new_key": [1]}
    assert v.meta.layer_convention == LAYER_CONVENTION == "block_output:0"
    assert v.meta.position == "response_avg" and v.meta.method == "mean_diff"
    assert v.meta.personaspace_version and v.meta.personaspace_version != "0+unknown"
    assert v.meta.created.endswith("+00:00")


def test_single_layer_vector():
    v = PersonaVector(torch.tensor([1.0, 2.0, 2.0]), VectorMeta(trait="t", model="m"), layers=(12,))
    assert v.data.shape == (1, 3) and v.layers == (12,) and not v.is_full
    assert torch.equal(v.at(12), torch.tensor([1.0, 2.0, 2.0]))
    assert torch.equal(v.at(-1), v.at(12))
    with pytest.raises(LayerOutOfRangeError, match=r"only layer\(s\) \[12\]"):
        v.at(3)
    with pytest.raises(VectorShapeError):
        PersonaVector(torch.ones(2, 3), VectorMeta(trait="t", model="m"), layers=(5,))
    with pytest.raises(VectorShapeError):
        PersonaVector(torch.ones(2, 3), VectorMeta(trait="t", model="m"), layers=(5, 4))
    assert "layers=[12]" in repr(v)


# -- layers and numerics ---------------------------------------------------------------------


def test_at_and_negative_indices():
    v = make(n_layers=4)
    assert torch.equal(v.at(0), v.data[0])
    assert torch.equal(v.at(-1), v.data[3])
    assert torch.equal(v.at(-4), v.data[0])
    assert v.layer_index(-1) == 3


@pytest.mark.parametrize("layer", [4, -5, 100])
def test_layer_out_of_range_names_valid_range(layer):
    v = make(n_layers=4)
    with pytest.raises(LayerOutOfRangeError, match="numbered 0 to 3") as info:
        v.at(layer)
    assert isinstance(info.value, IndexError)
    assert info.value.pointer == "personaspace explain layer-out-of-range"
    assert info.value.doc_path.endswith("layer-out-of-range.md")


def test_non_integer_layer():
    with pytest.raises(LayerOutOfRangeError):
        make().at(1.5)
    with pytest.raises(LayerOutOfRangeError):
        make().at(True)


def test_unit_and_norms_by_hand():
    v = PersonaVector(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]), VectorMeta(trait="t", model="m"))
    assert torch.allclose(v.norms(), torch.tensor([5.0, 0.0, 2.0]))
    assert torch.allclose(v.unit(0), torch.tensor([0.6, 0.8]))
    all_units = v.unit()
    assert torch.allclose(all_units, torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]]))
    assert not torch.isnan(all_units).any()  # zero row stays zero


def test_cosine_by_hand():
    meta = VectorMeta(trait="a", model="m")
    a = PersonaVector(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), meta)
    b = PersonaVector(torch.tensor([[0.0, 5.0], [2.0, 0.0], [1.0, 1.0]]), VectorMeta(trait="b", model="m"))
    per_layer = a.cosine(b)
    assert per_layer.shape == (3,)
    assert torch.allclose(per_layer, torch.tensor([0.0, 1 / math.sqrt(2), 0.0]), atol=1e-6)
    assert math.isclose(float(a.cosine(b, layer=1)), 1 / math.sqrt(2), rel_tol=1e-6)
    assert math.isclose(float(a.cosine(a, layer=1)), 1.0, rel_tol=1e-6)
    assert math.isclose(float(a.cosine(b, layer=-2)), 1 / math.sqrt(2), rel_tol=1e-6)


def test_cosine_width_mismatch():
    with pytest.raises(VectorShapeError, match="different widths"):
        make(d=6).cosine(make(d=8))


def test_cosine_needs_layer_when_layers_differ():
    full = make(n_layers=4)
    single = PersonaVector(full.at(2), VectorMeta(trait="s", model="toy-model"), layers=(2,))
    with pytest.raises(VectorShapeError):
        full.cosine(single)
    assert math.isclose(float(full.cosine(single, layer=2)), 1.0, rel_tol=1e-6)


def test_project_by_hand_and_batch_shape():
    v = PersonaVector(torch.tensor([[0.0, 3.0, 4.0]]), VectorMeta(trait="t", model="m"))
    acts = torch.tensor([[1.0, 1.0, 1.0], [0.0, -5.0, 0.0]])
    assert torch.allclose(v.project(acts, layer=0), torch.tensor([7 / 5, -3.0]))
    batch = torch.randn(2, 5, 3)
    out = v.project(batch, 0)
    assert out.shape == (2, 5)
    assert torch.allclose(out, batch[..., 1] * 0.6 + batch[..., 2] * 0.8, atol=1e-6)
    assert v.project(torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64), 0).dtype == torch.float64
    with pytest.raises(VectorShapeError, match="d_model=3"):
        v.project(torch.zeros(4, 5), 0)


def test_check_compatible():
    v = make(n_layers=4, d=6, model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert v.check_compatible(6, 4, model="smollm2-135m-instruct") == []
    with pytest.raises(VectorShapeError, match="width 6"):
        v.check_compatible(8)
    with pytest.raises(VectorShapeError, match="4 layers"):
        v.check_compatible(6, n_layers=30)
    warnings = v.check_compatible(6, 4, model="other-model")
    assert len(warnings) == 1 and "other-model" in warnings[0]
    post = make(n_layers=4, d=6, last_layer_post_norm=True)
    assert any("final norm" in w for w in post.check_compatible(6, 4))


def test_check_compatible_single_layer():
    v = PersonaVector(torch.ones(1, 4), VectorMeta(trait="t", model="m"), layers=(12,))
    assert v.check_compatible(4, n_layers=30) == []
    with pytest.raises(VectorShapeError, match="layer 12"):
        v.check_compatible(4, n_layers=10)


def test_repr():
    v = make(trait="evil", n_layers=30, d=576, model="smollm2-135m-instruct")
    assert repr(v) == "PersonaVector('evil', model='smollm2-135m-instruct', layers=30, d=576, position='response_avg')"


# -- files ----------------------------------------------------------------------------------


def test_save_load_round_trip_exact(tmp_path):
    v = make(
        n_layers=5,
        d=7,
        model_hash="abc123",
        position="prompt_last",
        n_pos=100,
        n_neg=90,
        n_kept=80,
        n_dropped=20,
        judge="gpt-4.1-mini",
        thresholds={"trait": 50, "coherence": 50},
        extra={"note": "x"},
    )
    st = v.save(tmp_path / "evil.prompt_last")
    assert st == tmp_path / "evil.prompt_last.safetensors"
    assert (tmp_path / "evil.prompt_last.json").is_file()
    for form in (st, tmp_path / "evil.prompt_last.json", tmp_path / "evil.prompt_last"):
        back = PersonaVector.load(form)
        assert torch.equal(back.data, v.data)
        assert back.meta == v.meta
        assert back.layers == v.layers
    assert sorted(os.listdir(tmp_path)) == ["evil.prompt_last.json", "evil.prompt_last.safetensors"]  # no temp files


def test_sidecar_contents_and_safetensors_metadata(tmp_path):
    from safetensors import safe_open

    v = make(trait="evil", model="toy-model")
    st = v.save(tmp_path / "v.safetensors")
    sidecar = json.loads((tmp_path / "v.json").read_text())
    assert sidecar["format"] == "personaspace.vector"
    assert sidecar["shape"] == [4, 6] and sidecar["layers"] == [0, 1, 2, 3] and sidecar["tensor"] == "vector"
    assert sidecar["meta"]["trait"] == "evil" and sidecar["meta"]["layer_convention"] == "block_output:0"
    with safe_open(str(st), "pt") as f:
        assert list(f.keys()) == ["vector"]
        meta = f.metadata()
        assert f.get_tensor("vector").dtype == torch.float32
    assert meta["trait"] == "evil" and meta["model"] == "toy-model"


def test_unknown_sidecar_keys_survive_in_extra(tmp_path):
    make().save(tmp_path / "v")
    sidecar = json.loads((tmp_path / "v.json").read_text())
    sidecar["meta"]["field_from_the_future"] = {"x": 1}
    (tmp_path / "v.json").write_text(json.dumps(sidecar))
    assert PersonaVector.load(tmp_path / "v").meta.extra["field_from_the_future"] == {"x": 1}


def test_truncated_safetensors_is_corrupt(tmp_path):
    st = make().save(tmp_path / "v")
    blob = st.read_bytes()
    for cut in (len(blob) - 10, 40, 5):
        st.write_bytes(blob[:cut])
        with pytest.raises(CorruptFileError, match="v.safetensors"):
            PersonaVector.load(st)


def test_missing_sidecar_is_corrupt(tmp_path):
    make().save(tmp_path / "v")
    (tmp_path / "v.json").unlink()
    with pytest.raises(CorruptFileError, match=r"v\.json is missing"):
        PersonaVector.load(tmp_path / "v.safetensors")


def test_missing_tensor_file(tmp_path):
    make().save(tmp_path / "v")
    (tmp_path / "v.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="v.safetensors is missing"):
        PersonaVector.load(tmp_path / "v.json")
    with pytest.raises(VectorsNotFoundError):
        PersonaVector.load(tmp_path / "nothing_here")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": "personaspace.vector"}', ""])
def test_garbage_sidecar_is_corrupt(tmp_path, text):
    make().save(tmp_path / "v")
    (tmp_path / "v.json").write_text(text)
    with pytest.raises(CorruptFileError, match="v.json"):
        PersonaVector.load(tmp_path / "v")


def test_bad_meta_types_are_corrupt(tmp_path):
    make().save(tmp_path / "v")
    sidecar = json.loads((tmp_path / "v.json").read_text())
    sidecar["meta"]["n_kept"] = "many"
    (tmp_path / "v.json").write_text(json.dumps(sidecar))
    with pytest.raises(CorruptFileError, match="n_kept"):
        PersonaVector.load(tmp_path / "v")


def test_mismatched_sidecar_is_corrupt(tmp_path):
    make(trait="a", seed=1).save(tmp_path / "a")
    make(trait="b", seed=2).save(tmp_path / "b")
    (tmp_path / "b.json").replace(tmp_path / "a.json")
    with pytest.raises(CorruptFileError, match="a.json does not belong to a.safetensors"):
        PersonaVector.load(tmp_path / "a")
    # same trait and shape, only the numbers differ: caught by the recorded hash alone
    old = make(trait="c", seed=3).save(tmp_path / "c").read_bytes()
    make(trait="c", seed=4).save(tmp_path / "c")
    (tmp_path / "c.safetensors").write_bytes(old)
    with pytest.raises(CorruptFileError, match="c.json does not belong to c.safetensors"):
        PersonaVector.load(tmp_path / "c")


def test_nan_in_file_is_corrupt(tmp_path):
    import safetensors.torch

    data = torch.ones(2, 3)
    data[1, 0] = float("inf")
    safetensors.torch.save_file({"vector": data}, str(tmp_path / "v.safetensors"))
    sidecar = {"format": "personaspace.vector", "meta": VectorMeta(trait="t", model="m").to_dict()}
    (tmp_path / "v.json").write_text(json.dumps(sidecar))
    with pytest.raises(CorruptFileError, match="v.safetensors"):
        PersonaVector.load(tmp_path / "v")


def test_single_layer_round_trip(tmp_path):
    v = PersonaVector(torch.tensor([[1.0, -2.0]]), VectorMeta(trait="t", model="m"), layers=(7,))
    back = PersonaVector.load(v.save(tmp_path / "t"))
    assert back.layers == (7,) and torch.equal(back.at(7), v.at(7))


# -- VectorSet ------------------------------------------------------------------------------


def test_vector_set_basics():
    vs = VectorSet([make("sycophancy", seed=1), make("evil", seed=2), make("humor", seed=3)])
    assert vs.traits == ["evil", "humor", "sycophancy"] and list(vs) == vs.traits
    assert (vs.model, vs.d_model, vs.n_layers, len(vs)) == ("toy-model", 6, 4, 3)
    assert "evil" in vs and "nope" not in vs and vs.get("nope") is None
    with pytest.raises(UnknownTraitError, match="evil, humor, sycophancy"):
        vs["nope"]
    stacked = vs.stack(2, traits=["sycophancy", "evil"])
    assert torch.equal(stacked, torch.stack([vs["sycophancy"].at(2), vs["evil"].at(2)]))
    units = vs.stack(-1, unit=True)
    assert units.shape == (3, 6) and torch.allclose(units.norm(dim=1), torch.ones(3))
    sub = vs.subset(["humor"])
    assert sub.traits == ["humor"] and sub["humor"] is vs["humor"]
    assert VectorSet({"evil": vs["evil"]}).traits == ["evil"]
    assert "traits=['evil', 'humor', 'sycophancy']" in repr(vs)


def test_vector_set_rejects_mixed_widths():
    with pytest.raises(VectorShapeError, match="different widths"):
        VectorSet([make("a", d=6), make("b", d=8)])


def test_vector_set_rejects_mixed_models_layers_duplicates_and_empty():
    with pytest.raises(VectorShapeError, match="different models"):
        VectorSet([make("a", model="m1"), make("b", model="m2")])
    with pytest.raises(VectorShapeError, match="different layers"):
        VectorSet([make("a", n_layers=4), make("b", n_layers=5)])
    with pytest.raises(VectorShapeError, match="Two vectors"):
        VectorSet([make("a", seed=1), make("a", seed=2)])
    with pytest.raises(VectorShapeError):
        VectorSet([])
    with pytest.raises(VectorShapeError, match="keys must be trait names"):
        VectorSet({"b": make("a")})


def test_vector_set_save_load_round_trip(tmp_path):
    vs = VectorSet([make("evil", seed=1), make("sycophancy", seed=2)])
    out = vs.save(tmp_path / "set")
    names = sorted(os.listdir(out))
    assert names == [
        "evil.response_avg.json",
        "evil.response_avg.safetensors",
        "index.json",
        "sycophancy.response_avg.json",
        "sycophancy.response_avg.safetensors",
    ]
    index = json.loads((out / "index.json").read_text())
    assert index["model"] == "toy-model" and index["d_model"] == 6 and len(index["entries"]) == 2
    back = VectorSet.load(out)
    assert back.traits == vs.traits
    for t in vs:
        assert torch.equal(back[t].data, vs[t].data) and back[t].meta == vs[t].meta


def test_vector_set_directory_with_several_positions(tmp_path):
    VectorSet([make("evil", seed=1, position="prompt_last")]).save(tmp_path)
    with pytest.raises(VectorsNotFoundError, match="prompt_last"):
        VectorSet.load(tmp_path, position="response_avg")
    assert VectorSet.load(tmp_path).positions == ["prompt_last"]  # only one position: chosen
    VectorSet([make("evil", seed=2), make("humor", seed=3)]).save(tmp_path)
    default = VectorSet.load(tmp_path)
    assert default.positions == ["response_avg"] and default.traits == ["evil", "humor"]
    last = VectorSet.load(tmp_path, position="prompt_last")
    assert last.traits == ["evil"] and torch.equal(last["evil"].data, make("evil", seed=1).data)
    assert len(json.loads((tmp_path / "index.json").read_text())["entries"]) == 3


def test_vector_set_save_refuses_other_model_directory(tmp_path):
    VectorSet([make("evil", model="m1")]).save(tmp_path)
    with pytest.raises(VectorShapeError, match="m1"):
        VectorSet([make("evil", model="m2")]).save(tmp_path)


def test_vector_set_load_detects_partial_copy_and_garbage_index(tmp_path):
    VectorSet([make("evil", seed=1), make("humor", seed=2)]).save(tmp_path)
    (tmp_path / "humor.response_avg.safetensors").unlink()
    (tmp_path / "humor.response_avg.json").unlink()
    with pytest.raises(CorruptFileError, match="humor.response_avg.safetensors"):
        VectorSet.load(tmp_path)
    (tmp_path / "index.json").write_text("garbage")
    with pytest.raises(CorruptFileError, match="index.json"):
        VectorSet.load(tmp_path)


def test_vector_set_load_errors(tmp_path):
    with pytest.raises(VectorsNotFoundError):
        VectorSet.load(tmp_path / "missing")
    with pytest.raises(VectorsNotFoundError, match="No vector files"):
        VectorSet.load(tmp_path)
    (tmp_path / "stray.safetensors").write_bytes(b"12345678")
    with pytest.raises(CorruptFileError, match="stray.json is missing"):
        VectorSet.load(tmp_path)


def test_unsafe_trait_names_get_safe_file_names(tmp_path):
    vs = VectorSet([make("big5/openness", seed=1)])
    vs.save(tmp_path)
    assert (tmp_path / "big5_openness.response_avg.safetensors").is_file()
    assert VectorSet.load(tmp_path).traits == ["big5/openness"]


# -- finding vectors ------------------------------------------------------------------------


def test_load_vectors_by_name_through_env(tmp_path, monkeypatch):
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    root_a.mkdir()
    VectorSet([make("evil", model="smollm2-135m-instruct")]).save(root_b / "smollm2-135m-instruct")
    monkeypatch.setenv(ENV_VECTORS, os.pathsep.join([str(root_a), str(root_b)]))
    paths = vector_search_paths()
    assert paths[:2] == [root_a, root_b] and paths[-1] == tmp_path / "home" / "vectors"
    vs = load_vectors("smollm2-135m-instruct")
    assert vs.traits == ["evil"]
    assert load_vectors("HuggingFaceTB/SmolLM2-135M-Instruct").traits == ["evil"]  # hub id finds the short folder
    assert load_vectors(root_b / "smollm2-135m-instruct").traits == ["evil"]  # a directory works directly
    single = load_vectors(root_b / "smollm2-135m-instruct" / "evil.response_avg.safetensors")
    assert single.traits == ["evil"]


def test_load_vectors_not_found_lists_searched_paths(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VECTORS, str(tmp_path / "somewhere"))
    with pytest.raises(VectorsNotFoundError) as info:
        load_vectors("no-such-model")
    message = str(info.value)
    assert str(tmp_path / "somewhere" / "no-such-model") in message
    assert str(tmp_path / "home" / "vectors" / "no-such-model") in message
    assert "vectors-not-found" in message
    assert isinstance(info.value, FileNotFoundError)


def test_load_vectors_skips_folder_without_the_position(tmp_path, monkeypatch):
    VectorSet([make("evil", position="prompt_last", model="m")]).save(tmp_path / "a" / "m")
    VectorSet([make("humor", model="m")]).save(tmp_path / "b" / "m")
    monkeypatch.setenv(ENV_VECTORS, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert load_vectors("m").traits == ["humor"]
    assert load_vectors("m", position="prompt_last").traits == ["evil"]


# -- controls -------------------------------------------------------------------------------


def test_random_like_keeps_norms_and_is_seeded():
    data = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    data[1] = 0.0
    v = PersonaVector(data, VectorMeta(trait="evil", model="m", n_kept=10))
    r = random_like(v, seed=3)
    assert torch.allclose(r.norms(), v.norms(), atol=1e-4)
    assert torch.equal(r.at(1), torch.zeros(256))
    assert torch.equal(r.data, random_like(v, seed=3).data)
    assert not torch.equal(r.data, random_like(v, seed=4).data)
    assert float(r.cosine(v, layer=0).abs()) < 0.3  # a random direction in 256-d is nearly orthogonal
    assert r.meta.method == "random" and r.meta.extra["random_of"] == "evil" and r.meta.extra["seed"] == 3
    assert r.trait == "random_evil_s3" and v.meta.method == "mean_diff"
    assert VectorSet([v, r]).traits == ["evil", "random_evil_s3"]


def test_load_vectors_path_that_does_not_exist_is_not_a_model_name(tmp_path, monkeypatch):
    VectorSet([make("evil", model="vectors")]).save(tmp_path / "env" / "vectors")
    monkeypatch.setenv(ENV_VECTORS, str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)  # a relative directory of the same name would win
    assert load_vectors("vectors").traits == ["evil"]  # a bare name is looked up
    with pytest.raises(VectorsNotFoundError, match="is not a directory"):
        load_vectors(tmp_path / "typo" / "vectors")  # a path is never reinterpreted as a name
    with pytest.raises(VectorsNotFoundError, match="is not a directory"):
        load_vectors("./typo/vectors")
