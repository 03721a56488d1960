"""modelfile.py, the service's own GGUF header walk, held against the `gguf` package (llama.cpp's
reader, a test dependency only): the same type sizes, the same end of tensor data."""
from __future__ import annotations

import gguf
import pytest
from ampere_llm_server.modelfile import _TYPE_SIZES, ModelFileError, check_model_file


def test_type_sizes_are_ggufs():
    assert _TYPE_SIZES == {int(t): size for t, size in gguf.GGML_QUANT_SIZES.items()}


def test_header_walk_agrees_with_gguf_reader(tmp_path, tiny_model):
    reader = gguf.GGUFReader(tiny_model)
    end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    assert end == tiny_model.stat().st_size
    check_model_file(tiny_model)  # complete: no error
    data = tiny_model.read_bytes()
    short = tmp_path / "short.gguf"
    short.write_bytes(data[:end - 1])  # one byte of the last tensor missing
    with pytest.raises(ModelFileError, match=f"truncated: {end - 1} bytes, its header describes {end}"):
        check_model_file(short)
    short.write_bytes(data[:4096])  # cut inside the key/values
    with pytest.raises(ModelFileError, match="truncated inside its GGUF header"):
        check_model_file(short)
