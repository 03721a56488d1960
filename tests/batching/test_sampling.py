"""The shortlist sampler picks the same tokens as llama.cpp's chain over the whole vocabulary.

The reference is what llama_sampler_sample() does (llama-sampler.cpp): every logit into a
candidate array, the chain applied to all of it, the selected token accepted. Both run a chain
made from the same parameters and seed, step after step, on logits built so that the repeat
penalty decides: the tokens chosen before get raw logits around the best of the rest.
"""
from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
import pytest

from ampere_llm_server.engine import SamplingParams
from ampere_llm_server.sampling import TOKEN_DATA, Sampler, make_chain

N_VOCAB = 49152          # SmolLM2's vocabulary size
STEPS = 300


def whole_vocabulary(chain, logits: np.ndarray) -> int:
    buf = np.zeros(len(logits), TOKEN_DATA)
    buf["id"], buf["logit"] = np.arange(len(logits)), logits
    cur = llama_cpp.llama_token_data_array(
        data=buf.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
        size=len(logits), selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
    token = cur.data[cur.selected].id
    llama_cpp.llama_sampler_accept(chain, token)
    return token


# name: (params, whether the logits below make the penalty pick tokens outside the raw top_k)
CASES = {
    "greedy": (SamplingParams(temperature=0, repeat_penalty=1.0), False),
    "greedy, penalty 1.3": (SamplingParams(temperature=0, repeat_penalty=1.3), True),
    "greedy, penalty 0.6 (lifts repeats)": (SamplingParams(temperature=0, repeat_penalty=0.6), True),
    "defaults, seeded": (SamplingParams(seed=11), False),
    "top_k 5, temperature 1.5, penalty 0.5": (SamplingParams(temperature=1.5, top_k=5,
                                                             repeat_penalty=0.5, seed=3), True),
    "top_k 0 (whole vocabulary)": (SamplingParams(top_k=0, temperature=0.9, seed=5), False),
}


@pytest.mark.parametrize("params, penalty_decides", CASES.values(), ids=CASES.keys())
def test_same_tokens_as_the_chain_over_the_whole_vocabulary(params, penalty_decides):
    rng = np.random.default_rng(42)
    ours, reference = Sampler(params, N_VOCAB), make_chain(params, N_VOCAB)
    chosen: list[int] = []
    outside_raw_top = 0      # steps a shortlist of the raw top_k alone would have got wrong
    try:
        for _ in range(STEPS):
            logits = rng.normal(0, 2, N_VOCAB).astype(np.float32)
            # what was said lately scores near the best raw logit (~8 here): a penalty above 1
            # pushes some of it below other tokens, one below 1 lifts some of it above them
            recent = chosen[-80:]
            logits[recent] = rng.uniform(5, 11, len(recent)).astype(np.float32)
            want = whole_vocabulary(reference, logits)
            got = ours.pick(logits)
            assert got == want, f"step {len(chosen)}: shortlist chose {got}, whole vocabulary {want}"
            keep = 1 if params.temperature <= 0 else params.top_k
            outside_raw_top += keep > 0 and want not in np.argsort(logits)[-keep:]
            chosen.append(want)
    finally:
        ours.close()
        llama_cpp.llama_sampler_free(reference)
    if penalty_decides:
        assert outside_raw_top > STEPS // 10, "the penalty hardly ever decided: a weak test"
