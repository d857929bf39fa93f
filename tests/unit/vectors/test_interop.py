"""persona_vectors .pt import/export and llama.cpp GGUF control vectors, with their layer numbering."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from personaspace.errors import (  # noqa: E402
    CorruptFileError,
    InterventionSpecError,
    LayerOutOfRangeError,
    VectorShapeError,
    VectorsNotFoundError,
)
from personaspace.vectors.formats import (  # noqa: E402
    export_gguf_control_vector,
    export_persona_vectors,
    import_persona_vectors,
    read_gguf_control_vector,
)
from personaspace.vectors.store import PersonaVector, VectorMeta  # noqa: E402


def pv_file(tmp_path, name="evil_response_avg_diff.pt", n_layers=24, d=16, seed=0):
    """A synthetic persona_vectors file: row i holds the value i in every column plus noise."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.arange(n_layers + 1, dtype=torch.float32)[:, None] + 0.01 * torch.randn(n_layers + 1, d, generator=gen)
    path = tmp_path / name
    torch.save(raw, path)
    return path, raw


def field_text(reader, key):
    field = reader.get_field(key)
    return bytes(field.parts[field.data[0]]).decode()


def field_value(reader, key):
    field = reader.get_field(key)
    return field.parts[field.data[0]][0]


# -- persona_vectors import -----------------------------------------------------------------


def test_import_drops_embedding_row_and_shifts_layers(tmp_path):
    path, raw = pv_file(tmp_path, n_layers=24, d=16)
    v = import_persona_vectors(path, model="Qwen/Qwen2.5-7B-Instruct")
    assert (v.n_layers, v.d_model) == (24, 16)
    for layer in range(24):
        assert torch.equal(v.at(layer), raw[layer + 1])  # our layer L = their row L + 1
    # their steering "layer 20" hooks model.layers[19]: our layer 19, their row 20
    assert torch.equal(v.at(19), raw[20])
    assert v.trait == "evil" and v.position == "response_avg" and v.model == "Qwen/Qwen2.5-7B-Instruct"
    assert v.meta.method == "imported" and v.meta.last_layer_post_norm is True
    assert v.meta.extra["source"] == "persona_vectors" and v.meta.extra["source_file"] == path.name
    assert v.meta.extra["source_shape"] == [25, 16]
    assert "position_assumed" not in v.meta.extra


@pytest.mark.parametrize(
    "name,trait,position",
    [
        ("sycophantic_prompt_last_diff.pt", "sycophantic", "prompt_last"),
        ("impolite_tone_all_avg_diff.pt", "impolite_tone", "all_avg"),
        ("x_prompt_avg_diff.pt", "x", "prompt_avg"),
    ],
)
def test_import_infers_trait_and_position_from_name(tmp_path, name, trait, position):
    path, _ = pv_file(tmp_path, name=name, n_layers=3, d=4)
    v = import_persona_vectors(path)
    assert (v.trait, v.position) == (trait, position)


def test_import_explicit_names_and_unrecognised_file_name(tmp_path):
    path, _ = pv_file(tmp_path, name="renamed.pt", n_layers=3, d=4)
    v = import_persona_vectors(path)
    assert v.trait == "renamed" and v.position == "response_avg" and v.meta.extra["position_assumed"] is True
    w = import_persona_vectors(path, trait="evil", position="prompt_avg", model="m")
    assert (w.trait, w.position, w.model) == ("evil", "prompt_avg", "m")
    assert "position_assumed" not in w.meta.extra


@pytest.mark.parametrize("tensor", [torch.zeros(8), torch.zeros(1, 8), torch.zeros(3, 4, 5), torch.zeros(4, 8, dtype=torch.int32)])
def test_import_wrong_shape(tmp_path, tensor):
    torch.save(tensor, tmp_path / "evil_response_avg_diff.pt")
    with pytest.raises(VectorShapeError, match="evil_response_avg_diff.pt"):
        import_persona_vectors(tmp_path / "evil_response_avg_diff.pt")


def test_import_unreadable(tmp_path):
    bad = tmp_path / "evil_response_avg_diff.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(CorruptFileError, match="evil_response_avg_diff.pt"):
        import_persona_vectors(bad)
    path, _ = pv_file(tmp_path, name="trunc_response_avg_diff.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="trunc_response_avg_diff.pt"):
        import_persona_vectors(path)
    torch.save({"vector": torch.zeros(3, 4)}, tmp_path / "dict_response_avg_diff.pt")
    with pytest.raises(CorruptFileError, match="not a tensor"):
        import_persona_vectors(tmp_path / "dict_response_avg_diff.pt")
    with pytest.raises(VectorsNotFoundError):
        import_persona_vectors(tmp_path / "missing_response_avg_diff.pt")


def test_import_nan_is_corrupt(tmp_path):
    raw = torch.zeros(4, 3)
    raw[2, 2] = float("nan")
    torch.save(raw, tmp_path / "evil_response_avg_diff.pt")
    with pytest.raises(CorruptFileError, match=r"layer\(s\) \[1\]"):
        import_persona_vectors(tmp_path / "evil_response_avg_diff.pt")


# -- persona_vectors export -----------------------------------------------------------------


def test_export_import_inverse(tmp_path):
    path, raw = pv_file(tmp_path, n_layers=6, d=5)
    v = import_persona_vectors(path, model="m")
    out = export_persona_vectors(v, tmp_path / "out" / "evil_response_avg_diff.pt", embedding_row=raw[0])
    assert torch.equal(torch.load(out, weights_only=True), raw)  # byte-for-byte values restored
    again = import_persona_vectors(out, model="m")
    assert torch.equal(again.data, v.data) and again.trait == "evil"


def test_export_zero_embedding_row_and_errors(tmp_path):
    v = PersonaVector(torch.randn(3, 4), VectorMeta(trait="evil", model="m"))
    out = export_persona_vectors(v, tmp_path / "evil_response_avg_diff.pt")
    saved = torch.load(out, weights_only=True)
    assert saved.shape == (4, 4) and torch.equal(saved[0], torch.zeros(4)) and torch.equal(saved[1:], v.data)
    with pytest.raises(VectorShapeError, match="embedding_row"):
        export_persona_vectors(v, tmp_path / "x.pt", embedding_row=torch.zeros(5))
    single = PersonaVector(torch.ones(1, 4), VectorMeta(trait="t", model="m"), layers=(2,))
    with pytest.raises(VectorShapeError, match="every layer"):
        export_persona_vectors(single, tmp_path / "y.pt")


# -- GGUF control vectors -------------------------------------------------------------------


def test_gguf_round_trip_with_reader(tmp_path):
    data = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    v = PersonaVector(data, VectorMeta(trait="evil", model="smollm2-135m-instruct"))
    out = export_gguf_control_vector(v, tmp_path / "evil.gguf", coef=1.5, model_hint="llama")
    assert out == tmp_path / "evil.gguf" and [p.name for p in tmp_path.iterdir()] == ["evil.gguf"]

    reader = gguf.GGUFReader(str(out))
    assert field_text(reader, "general.architecture") == "controlvector"
    assert field_text(reader, "controlvector.model_hint") == "llama"
    assert int(field_value(reader, "controlvector.layer_count")) == 4
    assert field_text(reader, "personaspace.layers") == "1,2,3,4"
    names = [t.name for t in reader.tensors]
    assert names == ["direction.1", "direction.2", "direction.3", "direction.4"]  # layer 0 is not expressible
    for t in reader.tensors:
        layer = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [8]
        # direction.N is added by llama.cpp to the output of block N = our layer N
        np.testing.assert_allclose(np.asarray(t.data), 1.5 * data[layer].numpy(), rtol=1e-6)

    back = read_gguf_control_vector(out)
    assert list(back) == [1, 2, 3, 4]
    for layer, vec in back.items():
        assert torch.allclose(vec, 1.5 * v.at(layer))


def test_gguf_layer_selection(tmp_path):
    v = PersonaVector(torch.randn(6, 4), VectorMeta(trait="t", model="m", extra={"model_type": "qwen2"}))
    out = export_gguf_control_vector(v, tmp_path / "a.gguf", layers=[3, -1])
    assert list(read_gguf_control_vector(out)) == [3, 5]
    assert field_text(gguf.GGUFReader(str(out)), "controlvector.model_hint") == "qwen2"
    with pytest.raises(LayerOutOfRangeError, match="layer 0"):
        export_gguf_control_vector(v, tmp_path / "b.gguf", layers=[0, 2])
    with pytest.raises(LayerOutOfRangeError, match="0 to 5"):
        export_gguf_control_vector(v, tmp_path / "c.gguf", layers=[6])
    with pytest.raises(InterventionSpecError):
        export_gguf_control_vector(v, tmp_path / "d.gguf", coef=float("nan"))
    assert not (tmp_path / "b.gguf").exists() and not (tmp_path / "c.gguf").exists()


def test_gguf_skips_post_norm_last_layer_of_imports(tmp_path):
    path, raw = pv_file(tmp_path, n_layers=4, d=6)
    v = import_persona_vectors(path)
    out = export_gguf_control_vector(v, tmp_path / "evil.gguf")
    back = read_gguf_control_vector(out)
    assert list(back) == [1, 2]  # layer 0 inexpressible, layer 3 (post-norm row) left out
    assert torch.equal(back[2], raw[3])  # our layer 2 = their row 3 = direction.2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_gguf_control_vector(v, tmp_path / "last.gguf", layers=[3])
    assert any("final norm" in str(w.message) for w in caught)


def test_gguf_single_layer_vector(tmp_path):
    v = PersonaVector(torch.tensor([1.0, 2.0, 3.0]), VectorMeta(trait="t", model="m"), layers=(12,))
    back = read_gguf_control_vector(export_gguf_control_vector(v, tmp_path / "t.gguf", coef=-1.0))
    assert list(back) == [12] and torch.equal(back[12], torch.tensor([-1.0, -2.0, -3.0]))
    only_zero = PersonaVector(torch.ones(1, 3), VectorMeta(trait="t", model="m"), layers=(0,))
    with pytest.raises(LayerOutOfRangeError):
        export_gguf_control_vector(only_zero, tmp_path / "z.gguf")


def _write_gguf(path, arch, tensors):
    writer = gguf.GGUFWriter(str(path), arch)
    for name, values in tensors.items():
        writer.add_tensor(name, np.asarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_read_gguf_rejects_bad_files(tmp_path):
    _write_gguf(tmp_path / "model.gguf", "llama", {"token_embd.weight": np.zeros(4)})
    with pytest.raises(CorruptFileError, match="'llama'"):
        read_gguf_control_vector(tmp_path / "model.gguf")
    _write_gguf(tmp_path / "zero.gguf", "controlvector", {"direction.0": np.zeros(4)})
    with pytest.raises(CorruptFileError, match="direction.0"):
        read_gguf_control_vector(tmp_path / "zero.gguf")
    _write_gguf(tmp_path / "widths.gguf", "controlvector", {"direction.1": np.zeros(4), "direction.2": np.zeros(5)})
    with pytest.raises(CorruptFileError, match="direction.2"):
        read_gguf_control_vector(tmp_path / "widths.gguf")
    _write_gguf(tmp_path / "name.gguf", "controlvector", {"steer.1": np.zeros(4)})
    with pytest.raises(CorruptFileError, match="steer.1"):
        read_gguf_control_vector(tmp_path / "name.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 7)
    with pytest.raises(CorruptFileError, match="junk.gguf"):
        read_gguf_control_vector(tmp_path / "junk.gguf")
    with pytest.raises(VectorsNotFoundError):
        read_gguf_control_vector(tmp_path / "missing.gguf")


def test_read_gguf_written_by_other_tools(tmp_path):
    """Files from repeng or llama-cvector-generator: direction.N is read as our layer N."""
    _write_gguf(tmp_path / "ext.gguf", "controlvector", {"direction.2": [1, 0], "direction.5": [0, 2]})
    back = read_gguf_control_vector(tmp_path / "ext.gguf")
    assert list(back) == [2, 5] and torch.equal(back[5], torch.tensor([0.0, 2.0]))
