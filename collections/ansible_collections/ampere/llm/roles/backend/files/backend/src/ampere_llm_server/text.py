"""Tokens to text for the engine: model-side helpers plus the incremental detokenizer with stop strings.

The engine (`BatchEngine`) keeps one `TextStream` per sequence and feeds it the bytes of every
sampled token (`token_bytes`); the stream returns the text that may be shown now. Two rules make the
stream safe to show as it grows:

- UTF-8: a character split across tokens (emoji, CJK, byte-fallback tokens) is held until its last
  byte arrives, so no client ever sees half a character or a U+FFFD that would not be in the text.
- Stop strings: text that could be the beginning of a stop string is held back until the next
  tokens show whether it is one. When a stop string completes, the text before it is released,
  the stop string itself is dropped and `stopped` turns true: the engine ends with finish "stop".

At the end of a sequence (length, end-of-generation token) the engine calls `flush()` and emits
what it returns as `Token(text, token_id=-1)`: held-back text that turned out not to be a stop.
"""
from __future__ import annotations

import codecs
import ctypes
from collections.abc import Mapping, Sequence

import llama_cpp

FLUSH_TOKEN_ID = -1  # Token.token_id of the text released by flush(): not a new token


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def push(self, data: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to show (often "")."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        return self._release(final=False)

    def flush(self) -> str:
        """End of sequence: everything still held (an incomplete character becomes U+FFFD)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        held = self._held
        hits = [i for i in (held.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return held[: min(hits)]
        keep = 0 if final else self._stop_prefix_len(held)
        self._held = held[len(held) - keep:] if keep else ""
        return held[: len(held) - keep]

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest end of `text` that some stop string starts with."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


def token_bytes(vocab: ctypes.c_void_p, token_id: int) -> bytes:
    """The raw bytes of one token as text (control tokens such as <|im_end|> give b"")."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, len(buf), 0, False)
    if n < 0:  # the piece is longer than the buffer: -n is its length
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, len(buf), 0, False)
    return buf.raw[:n]


def chat_renderer(metadata: Mapping[str, str], bos_text: str, eos_text: str):
    """A function messages -> prompt text using the model's own template (GGUF metadata
    `tokenizer.chat_template`), rendered like llama-cpp-python and Hugging Face do; None when the
    model has no template (then /generate with messages is a 400, prompts still work)."""
    template = metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text,
                                    add_generation_prompt=True)

    def render(messages: Sequence[dict]) -> str:
        return formatter(messages=list(messages)).prompt

    return render
