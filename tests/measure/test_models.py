"""The default model from its GGUF file: the first load converts and caches it, and the model it
returns is an ordinary one that a fine-tune can save (a GGUF-loaded model cannot be saved)."""
import torch

from conftest import need_data


def test_first_gguf_load_returns_a_savable_model(tmp_path, monkeypatch):
    from cull.measure.models import load_model

    folder = need_data("models", "smollm2-135m-instruct")
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path / "cache"))
    model, tok = load_model(str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf"), say=lambda m: None)
    assert getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(tmp_path / "saved")  # raised "quantized with gguf and is not serializable"
    again, _ = load_model(str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf"), say=lambda m: None)  # from the cache
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
