"""A random-weight 2-layer llama GGUF for fast tests: real format, real tokenizer, nonsense text.

It loads in real llama.cpp in milliseconds and streams thousands of tokens per second, so the
service's machinery (streaming, queueing, cancellation, errors) can be tested without waiting on a
real model. Output is deterministic at temperature 0. The tokenizer (llama SPM, 32k pieces) is
copied from the vocab-only GGUF that the pinned llama-cpp-python sdist ships in
vendor/llama.cpp/models/, so no download is needed beyond what `make` already fetched.

Usage: python scripts/tiny_model.py DEST.gguf
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_LAYER = 2
N_CTX_TRAIN = 2048
# ChatML, so /generate with messages and the OpenAI chat route work on this model as on SmolLM2.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REPO = Path(__file__).resolve().parent.parent
PINS = REPO / "collections/ansible_collections/ampere/llm/roles/llama_cpp/defaults/main.yml"


def vocab_file() -> Path:
    """The llama-spm vocab GGUF inside the unpacked sdist of the pinned llama-cpp-python."""
    m = re.search(r'^llama_cpp_bindings_version:\s*"([^"]+)"', PINS.read_text(), re.M)
    if not m:
        raise SystemExit(f"tiny_model: no llama_cpp_bindings_version in {PINS}")
    cache = Path(os.environ.get("AMPERE_LLM_CACHE", Path.home() / ".cache" / "ampere-llm"))
    path = (cache / "src" / f"llama_cpp_python-{m.group(1)}" / "vendor" / "llama.cpp" / "models"
            / "ggml-vocab-llama-spm.gguf")
    if not path.exists():
        raise SystemExit(f"tiny_model: {path} is missing; run `make setup` to unpack the sdist")
    return path


def build(dest: Path, seed: int = 0) -> Path:
    """Write the tiny model to dest (atomically: a reader never sees half a file)."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    vocab = GGUFReader(vocab_file())
    tok_fields = [f for name, f in vocab.fields.items() if name.startswith("tokenizer.")]
    n_vocab = len(vocab.fields["tokenizer.ggml.tokens"].data)

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    w = GGUFWriter(str(part), "llama")
    w.add_name("tiny-llama-random")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)  # mostly f16
    for f in tok_fields:
        main = f.types[0]
        sub = f.types[-1] if main == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), main, sub_type=sub)
    w.add_chat_template(CHATML)

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5 / np.sqrt(shape[-1])).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)

    w.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", norm())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(b + name + ".weight", weight(N_EMBD, N_EMBD))
        w.add_tensor(b + "ffn_norm.weight", norm())
        w.add_tensor(b + "ffn_gate.weight", weight(N_FF, N_EMBD))
        w.add_tensor(b + "ffn_up.weight", weight(N_FF, N_EMBD))
        w.add_tensor(b + "ffn_down.weight", weight(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", norm())
    w.add_tensor("output.weight", weight(n_vocab, N_EMBD))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    part.replace(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    print(build(Path(sys.argv[1])))
