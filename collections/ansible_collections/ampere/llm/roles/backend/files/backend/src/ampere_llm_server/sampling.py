"""Each request's own llama.cpp sampler chain, run on a shortlist of the vocabulary (BatchEngine).

`llama_sampler_sample()` copies every logit of the vocabulary (49k for SmolLM2, 262k for Gemma 3)
into a candidate array and runs the chain over all of it, once per sequence per step; at 8
streams that copy alone is several per cent of a decode step, and it is serial with the decode.
The chain never needs most of it:

- it keeps only the `top_k` best tokens (greedy: the best one) after the repeat penalty;
- the repeat penalty changes only tokens among the last PENALTY_LAST_N generated (`recent`).

So the answer is always among the `top_k + len(recent)` best raw logits plus `recent` itself: of
the best `top_k + len(recent)`, at least `top_k` are not penalised and keep their logits, and no
unpenalised token outside them can beat those. numpy finds a superset of that shortlist in about
one pass over the logits (`_shortlist`), and the same llama.cpp chain (penalties, top-k, top-p,
min-p, temperature, seeded draw) runs on it through `llama_sampler_apply`: the same token as over
the whole vocabulary, seed for seed, for a fraction of the work. The shortlist is in token-id
order, as the whole vocabulary is, so greedy ties go to the same (lowest) id. A chain that looks
at every token (`top_k` 0) gets all of them.

A request with a grammar (structured output, grammar.py) gets the same answer as llama.cpp's
grammar sampler run over the whole vocabulary before the chain: the grammar masks the shortlist
first, and the shortlist is trusted only if at least `top_k` tokens it allows are among the best
raw logits and outside `recent` (then no allowed token left out can make the top k). Otherwise,
as when the model's favourites all break the grammar (a letter where only `"` or `}` may come),
the shortlist grows 16-fold until it holds enough, the whole vocabulary at the most. Every
sequence samples through this class, with its own grammar state.
"""
from __future__ import annotations

import collections
import ctypes
import random

import llama_cpp
import numpy as np

from . import grammar as grammar_mod
from .engine import SamplingParams

PENALTY_LAST_N = 64      # tokens the repeat penalty looks back on, as llama-cpp-python's Llama does
STRIDE = 8               # every STRIDE-th logit bounds the shortlist from below (Sampler._shortlist)

# llama_token_data {id, logit, p} as numpy sees it, so a shortlist is filled without a Python loop
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


def make_chain(p: SamplingParams, n_vocab: int) -> ctypes.c_void_p:
    """The request's sampler chain, in the order llama-cpp-python's Llama builds it: repeat
    penalty, then greedy at temperature 0, else top-k, top-p, min-p, temperature, seeded draw."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
    add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, p.repeat_penalty,
                                               p.frequency_penalty, p.presence_penalty))
    if p.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        add(llama_cpp.llama_sampler_init_top_k(p.top_k))
        add(llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(p.temperature))
        add(llama_cpp.llama_sampler_init_dist(p.seed if p.seed is not None
                                              else random.getrandbits(32)))
    return chain


class NoTokenAllowed(RuntimeError):
    """The grammar allows no token of the vocabulary here: the sequence cannot go on."""


class Sampler:
    """One request's chain (and grammar state) and what it needs to pick from a shortlist. Not
    thread-safe: the engine's worker thread owns it. `vocab` is needed only with a grammar."""

    def __init__(self, p: SamplingParams, n_vocab: int, vocab=None) -> None:
        if p.grammar and vocab is None:  # llama.cpp would abort on the first token
            raise ValueError("a grammar needs the model's vocabulary")
        self.grammar = grammar_mod.new_sampler(vocab, p.grammar) if p.grammar else None
        self.chain = make_chain(p, n_vocab)
        self._n_vocab = n_vocab
        keep = 1 if p.temperature <= 0 else p.top_k
        self._keep = keep if 0 < keep < n_vocab else 0          # 0: the chain sees every token
        # penalties that are no-ops in llama.cpp move no token: then `recent` is not needed
        penalised = (p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0
                     or p.presence_penalty != 0.0)
        self._recent = (collections.deque(maxlen=PENALTY_LAST_N)
                        if penalised and self._keep else None)
        # Greedy with no-op penalties and no grammar: the chain would only confirm the argmax,
        # so it is not called (three ctypes calls and a candidate array less per token).
        self._argmax_only = self._keep == 1 and not penalised and self.grammar is None
        self._buf = np.empty(n_vocab, dtype=TOKEN_DATA)     # a shortlist can be all of it
        self._data = self._buf.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self._cur = llama_cpp.llama_token_data_array(data=self._data, size=0, selected=-1, sorted=False)

    def sample(self, ctx: llama_cpp.llama_context_p, i: int) -> int:
        """The token for the logits at batch index i; the chain accepts it (penalty history)."""
        return self.pick(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i),
                                               shape=(self._n_vocab,)))

    def pick(self, logits: np.ndarray) -> int:
        """The token for these logits (one per vocabulary entry), chosen by the chain from the
        shortlist; the chain accepts it."""
        if self._argmax_only:
            return int(logits.argmax())                         # the first (lowest) id, as greedy
        recent = (np.unique(np.fromiter(self._recent, np.int32, len(self._recent)))
                  if self._recent else None)
        if self._keep == 1 and recent is None:
            ids = np.array([logits.argmax()])                   # argmax: the first (lowest) id
        else:
            ids = self._shortlist(logits, recent)
        cur = self._fill(ids, logits)
        if self.grammar is not None:
            cur = self._constrain(logits, recent, ids, cur)
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(cur))
        token = cur.data[cur.selected].id                       # as llama_sampler_sample reads it
        if self.grammar is not None:
            llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        if self._recent is not None:
            self._recent.append(token)
        return token

    def _fill(self, ids: np.ndarray, logits: np.ndarray) -> llama_cpp.llama_token_data_array:
        """The candidate array of these tokens with their logits."""
        buf = self._buf[:len(ids)]
        buf["id"], buf["logit"], buf["p"] = ids, logits[ids], 0.0
        cur = self._cur
        # samplers may point cur.data elsewhere (llama.h): set every field again
        cur.data, cur.size, cur.selected, cur.sorted = self._data, len(ids), -1, False
        return cur

    def _constrain(self, logits: np.ndarray, recent: np.ndarray | None, ids: np.ndarray,
                   cur: llama_cpp.llama_token_data_array) -> llama_cpp.llama_token_data_array:
        """Mask the candidates with the grammar; while too few allowed ones are left to be sure
        of the answer, widen the shortlist 16-fold (at last to the whole vocabulary, which costs
        a grammar check of every token: 33 ms on SmolLM2's 49k on a busy 2-core box) and mask
        again."""
        m = self._keep + (0 if recent is None else len(recent))
        while True:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(cur))
            if len(ids) == self._n_vocab or self._grammar_kept_enough(ids, recent):
                break
            m *= 16
            ids = self._shortlist(logits, recent, m)
            cur = self._fill(ids, logits)
        if np.isneginf(self._buf["logit"][:cur.size]).all():
            raise NoTokenAllowed("the grammar allows no token here")
        return cur

    def _grammar_kept_enough(self, ids: np.ndarray, recent: np.ndarray | None) -> bool:
        """After the grammar masked the shortlist `ids`: is the chain's answer surely among them?
        Every token outside `ids` has a raw logit below all non-recent tokens in it and no
        penalty, so `keep` allowed non-recent tokens in `ids` are enough."""
        allowed = ~np.isneginf(self._buf["logit"][:len(ids)])
        if recent is not None:
            allowed &= ~np.isin(ids, recent)
        return int(allowed.sum()) >= self._keep

    def _shortlist(self, logits: np.ndarray, recent: np.ndarray | None,
                   m: int | None = None) -> np.ndarray:
        """Token ids, ascending, holding the best `m` (default `keep + len(recent)`) logits and
        `recent`.

        Any superset will do (the chain itself picks the best `keep`), so no exact selection is
        needed: the m-th best logit of every STRIDE-th token is at most the m-th best of all
        tokens, so every token at or above it is in, with about STRIDE x m tokens in all. That is
        one pass over the logits instead of argpartition's several (3-4x faster on 262k)."""
        if m is None:
            m = (self._keep or self._n_vocab) + (0 if recent is None else len(recent))
        sub = logits[::STRIDE]
        if m >= len(sub):
            ids = np.arange(self._n_vocab)
        else:
            ids = np.flatnonzero(logits >= np.partition(sub, -m)[-m])
        return ids if recent is None else np.union1d(ids, recent)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
