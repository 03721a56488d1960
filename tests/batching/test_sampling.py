"""The shortlist sampler picks the same tokens as llama.cpp's chain over the whole vocabulary.

The reference is what llama_sampler_sample() does (llama-sampler.cpp): every logit into a
candidate array, the chain applied to all of it, the selected token accepted. Both run a chain
made from the same parameters and seed, step after step, on logits built so that the repeat
penalty decides: the tokens chosen before get raw logits around the best of the rest.
"""
from __future__ import annotations

import ctypes
import json
from dataclasses import replace

import llama_cpp
import numpy as np
import pytest
from ampere_llm_server import grammar, text
from ampere_llm_server.engine import SamplingParams
from ampere_llm_server.sampling import TOKEN_DATA, Sampler, make_chain

N_VOCAB = 49152          # SmolLM2's vocabulary size
STEPS = 300


def whole_vocabulary(chain, logits: np.ndarray, grammar_sampler=None) -> int:
    buf = np.zeros(len(logits), TOKEN_DATA)
    buf["id"], buf["logit"] = np.arange(len(logits)), logits
    cur = llama_cpp.llama_token_data_array(
        data=buf.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
        size=len(logits), selected=-1, sorted=False)
    if grammar_sampler is not None:
        llama_cpp.llama_sampler_apply(grammar_sampler, ctypes.byref(cur))
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
    token = cur.data[cur.selected].id
    if grammar_sampler is not None:
        llama_cpp.llama_sampler_accept(grammar_sampler, token)
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
    "greedy, frequency 1.5 and presence 1": (SamplingParams(temperature=0, repeat_penalty=1.0,
                                                            frequency_penalty=1.5,
                                                            presence_penalty=1.0), True),
    "top_k 5, frequency and presence -2 (lift repeats)": (
        SamplingParams(top_k=5, seed=9, repeat_penalty=1.0, frequency_penalty=-2.0,
                       presence_penalty=-2.0), True),
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


# --- structured output: the grammar on the shortlist --------------------------------------------
# The reference is llama.cpp's grammar sampler over the whole vocabulary, then the same chain (what
# llama-server and llama-cpp-python's Llama do). The grammar needs a real vocabulary (token texts):
# SmolLM2's, loaded without weights.
PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
    "required": ["name", "age"]}
GRAMMAR_CASES = {
    "greedy": SamplingParams(temperature=0, repeat_penalty=1.0),
    "greedy, penalty 1.3": SamplingParams(temperature=0, repeat_penalty=1.3),
    "defaults, seeded": SamplingParams(seed=11),
    "top_k 0, frequency and presence penalties": SamplingParams(top_k=0, seed=5,
                                                                frequency_penalty=0.5,
                                                                presence_penalty=0.3),
}


@pytest.fixture(scope="module")
def vocab(smollm2_model):
    from llama_cpp._internals import LlamaModel
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(smollm2_model), params=params, verbose=False)
    assert llama_cpp.llama_vocab_n_tokens(model.vocab) == N_VOCAB
    yield model.vocab
    model.close()


class Counting(Sampler):
    """The real Sampler, counting the steps the shortlist was enough and those that fell back."""
    shortlist = fallback = 0

    def _grammar_kept_enough(self, ids, recent):
        enough = super()._grammar_kept_enough(ids, recent)
        self.shortlist += enough
        self.fallback += not enough
        return enough


@pytest.mark.parametrize("schema", [grammar.JSON_OBJECT_SCHEMA, PERSON], ids=["json_object", "person"])
@pytest.mark.parametrize("params", GRAMMAR_CASES.values(), ids=GRAMMAR_CASES.keys())
def test_grammar_on_the_shortlist_picks_what_the_whole_vocabulary_picks(vocab, params, schema):
    params = replace(params, grammar=grammar.to_gbnf(schema))
    rng = np.random.default_rng(7)
    # tokens with a quote score high now and then, so strings end and the structure between them
    # (where most tokens break the grammar) comes up often
    quotes = [t for t in range(N_VOCAB) if b'"' in text.token_bytes(vocab, t)]
    ours = Counting(params, N_VOCAB, vocab)
    ref_grammar, ref_chain = grammar.new_sampler(vocab, params.grammar), make_chain(params, N_VOCAB)
    chosen: list[int] = []
    steps = 60
    try:
        for _ in range(steps):
            logits = rng.normal(0, 2, N_VOCAB).astype(np.float32)
            recent = chosen[-80:]
            logits[recent] = rng.uniform(5, 11, len(recent)).astype(np.float32)
            logits[quotes] += rng.uniform(0, 4, len(quotes)).astype(np.float32)
            want = whole_vocabulary(ref_chain, logits, ref_grammar)
            got = ours.pick(logits)
            assert got == want, f"step {len(chosen)}: shortlist chose {got}, whole vocabulary {want}"
            if llama_cpp.llama_vocab_is_eog(vocab, want):
                break                                   # the grammar let the answer end
            chosen.append(want)
    finally:
        ours.close()
        llama_cpp.llama_sampler_free(ref_chain)
        llama_cpp.llama_sampler_free(ref_grammar)
    if params.top_k:  # both ways were taken: the test covers the shortlist and the fallback
        assert ours.shortlist and ours.fallback, (ours.shortlist, ours.fallback)


def test_the_grammar_bounds_whitespace_so_a_whitespace_loving_model_ends(vocab):
    """Logits of a model that would rather write whitespace than anything else, then `}`, then end
    the sequence: under the service's JSON grammar it must still end, with JSON. The stock JSON
    grammar llama-cpp-python ships (whitespace unbounded) shows what happens otherwise."""
    texts = [text.token_bytes(vocab, t) for t in range(N_VOCAB)]
    logits = np.random.default_rng(3).normal(0, 1, N_VOCAB).astype(np.float32)
    blank = [t for t, b in enumerate(texts) if b and not b.strip()]
    assert len(blank) > 20                                    # spaces, newlines, tabs, runs of them
    logits[blank] = 10
    logits[texts.index(b"{")] = 9
    logits[texts.index(b"}")] = 8
    eog = [t for t in range(N_VOCAB) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    logits[eog] = 6

    def run(gbnf: str, limit: int = 100) -> tuple[bytes, bool]:
        s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.0, grammar=gbnf), N_VOCAB,
                    vocab)
        out = b""
        try:
            for _ in range(limit):
                token = s.pick(logits.copy())
                if token in eog:
                    return out, True
                out += texts[token]
        finally:
            s.close()
        return out, False

    out, ended = run(grammar.to_gbnf(grammar.JSON_OBJECT_SCHEMA))
    assert ended and json.loads(out) == {} and len(out) <= 4, out
    from llama_cpp.llama_grammar import JSON_ARR_GBNF  # ws ::= ([ \t\n] ws)?
    out, ended = run(JSON_ARR_GBNF)
    assert not ended and len(out.strip()) <= 2, out[:40]  # whitespace until the limit


def accepts(vocab, tokens: list[int], gbnf: str) -> bool:
    """Whether the grammar lets exactly these tokens through, then the end of the sequence: at
    each step the wanted token has the best logit and must be what is picked."""
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.0, grammar=gbnf), N_VOCAB, vocab)
    eog = [t for t in range(N_VOCAB) if llama_cpp.llama_vocab_is_eog(vocab, t)][0]
    try:
        for want in [*tokens, eog]:
            logits = np.zeros(N_VOCAB, np.float32)
            logits[want] = 10
            if s.pick(logits) != want:
                return False
    except Exception:  # noqa: BLE001 - NoTokenAllowed: nothing fits at all
        return False
    finally:
        s.close()
    return True


def test_enum_values_and_keys_with_escapes_come_out_as_their_json(vocab, smollm2_model):
    from llama_cpp._internals import LlamaModel
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(smollm2_model), params=params, verbose=False)
    bytewise = lambda s: [t for ch in s.encode() for t in model.tokenize(bytes([ch]), False, False)]  # noqa: E731
    try:
        odd = ['say "hi"', "two\nlines", "back\\slash"]
        gbnf = grammar.to_gbnf({"type": "object", "properties": {'k"\\': {"enum": odd}},
                                "required": ['k"\\']})
        for value in odd:
            text = json.dumps({'k"\\': value}, separators=(",", ":"))
            assert accepts(vocab, bytewise(text), gbnf), text
        # what llama-cpp-python's converter alone would have let through instead: a raw newline
        assert not accepts(vocab, bytewise('{"k\\"\\\\":"two\nlines"}'), gbnf)
        # a pattern applies to the value; the JSON text around it keeps quotes out of the string
        gbnf = grammar.to_gbnf({"type": "string", "pattern": r"^.+\.\d$"})
        assert accepts(vocab, bytewise('"a b.7"'), gbnf)
        assert not accepts(vocab, bytewise('"a"b.7"'), gbnf)
        assert not accepts(vocab, bytewise('"a b:7"'), gbnf)
    finally:
        model.close()
