"""Run a `vistune export --to gguf` directory with llama.cpp itself (libllama + libmtmd through the
`llama-cpp-python` bindings): image embeddings, prompt tokens and greedy decoding, as llama.cpp's own
`llama-mtmd-cli` computes them. Used by the export's tests and `benchmarks/bench_llamacpp.py`.

`make install` builds the libraries from llama.cpp's source into the virtual environment; `runtime_problem()`
says why they cannot be used where they cannot.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vistune.model.gguf_export import MEDIA_MARKER


def runtime_problem() -> str | None:
    """None when llama.cpp's libraries load; else why not (including the build log's last lines when the build in
    `make install` failed)."""
    import sys

    try:
        import llama_cpp  # noqa: F401
        from llama_cpp import mtmd_cpp  # noqa: F401
    except (ImportError, OSError, FileNotFoundError, RuntimeError) as e:
        log = Path(sys.prefix) / "llama.cpp" / "build.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:]) if log.is_file() else ""
        return f"llama.cpp's runtime did not load ({type(e).__name__}: {e})" + (f"; build log:\n{tail}" if tail
                                                                                else "")
    return None


@dataclass
class Generation:
    prompt_tokens: list[int]
    """Text tokens of the prompt in order (image positions left out), BOS included when the vocabulary adds it."""
    image_positions: list[int]
    """How many positions each image took, in order."""
    tokens: list[int] = field(default_factory=list)
    """Generated token ids (greedy), the end-of-generation token included when it was reached."""
    time_to_first_token: float = 0.0
    """Seconds from the start of prompt processing (image encoding included) to the first token's logits."""
    decode_seconds: float = 0.0
    """Seconds spent producing the tokens after the first."""


class LlamaCppModel:
    """`model.gguf` + `mmproj.gguf` loaded in llama.cpp (CPU, `threads` threads)."""

    def __init__(self, model_path: str | Path, mmproj_path: str | Path, threads: int = 2, n_ctx: int = 2048,
                 exact: bool = False) -> None:
        """`exact`: no flash attention (llama.cpp's CPU kernel keeps K/V in fp16) and an f32 K/V cache; else
        llama.cpp's defaults on a CPU (flash attention, f16 cache)."""
        import llama_cpp
        from llama_cpp import mtmd_cpp

        self._llama_cpp, self._mtmd = llama_cpp, mtmd_cpp
        cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if exact else {}
        self.llama = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                                     n_threads_batch=threads, flash_attn=not exact, verbose=False, **cache)
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = threads
        params.warmup = False
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED if exact
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED)
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj_path).encode(), self.llama.model, params)
        if not self.ctx:
            raise RuntimeError(f"libmtmd could not load {mmproj_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        if self.ctx:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None
        self.llama.close()

    def __enter__(self) -> "LlamaCppModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    # prompts

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text llama.cpp's servers build: the GGUF's own chat template applied to `messages` (contents as
        strings with `<__media__>` markers, or lists of image / text items), with the generation prompt."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        template = self.llama.metadata["tokenizer.chat_template"]
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        token = lambda key: self._token_text(self.llama.metadata.get(key))  # noqa: E731
        return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                bos_token=token("tokenizer.ggml.bos_token_id"),
                                                eos_token=token("tokenizer.ggml.eos_token_id"))

    def _token_text(self, token_id) -> str:
        if token_id is None:
            return ""
        return self._llama_cpp.llama_vocab_get_text(self.vocab, int(token_id)).decode("utf-8", errors="replace")

    def _bitmap(self, image: Image.Image):
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))  # (H, W, 3)
        data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
        bitmap = self._mtmd.mtmd_bitmap_init(image.width, image.height, data)
        if not bitmap:
            raise RuntimeError("libmtmd could not take the image")
        return bitmap

    def _chunks(self, text: str, images: list[Image.Image]):
        """libmtmd's tokenization of `text` (one marker per image) into text and image chunks."""
        m = self._mtmd
        bitmaps = [self._bitmap(im) for im in images]
        raw = text.encode("utf-8")
        inp = m.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), True, True
        chunks = m.mtmd_input_chunks_init()
        array = (m.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        try:
            code = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), array, len(bitmaps))
        finally:
            for b in bitmaps:
                m.mtmd_bitmap_free(b)
        if code != 0:
            m.mtmd_input_chunks_free(chunks)
            raise ValueError(f"libmtmd could not tokenize the prompt (code {code}): one {MEDIA_MARKER} per image")
        return chunks

    # ------------------------------------------------------------------------------------------
    # computations

    def image_embeddings(self, image: Image.Image) -> np.ndarray:
        """libmtmd's projected features of one image: (N, D_llm)."""
        m = self._mtmd
        chunks = self._chunks(MEDIA_MARKER, [image])
        try:
            for i in range(m.mtmd_input_chunks_size(chunks)):
                chunk = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    n = m.mtmd_input_chunk_get_n_tokens(chunk)
                    if m.mtmd_encode_chunk(self.ctx, chunk) != 0:
                        raise RuntimeError("libmtmd could not encode the image")
                    width = self._llama_cpp.llama_model_n_embd(self.llama.model)
                    out = np.ctypeslib.as_array(m.mtmd_get_output_embd(self.ctx), shape=(n * width,))
                    return out.reshape(n, width).copy()
        finally:
            m.mtmd_input_chunks_free(chunks)
        raise RuntimeError("the prompt held no image")

    def generate(self, text: str, images: list[Image.Image], max_new_tokens: int) -> Generation:
        """Greedy decoding (the highest logit; ties to the lowest id) from the prompt `text` with its images,
        stopping at an end-of-generation token or after `max_new_tokens`."""
        m, lc = self._mtmd, self._llama_cpp
        llama = self.llama
        llama.reset()
        llama._ctx.kv_cache_clear()
        start = time.perf_counter()
        chunks = self._chunks(text, images)
        out = Generation(prompt_tokens=[], image_positions=[])
        try:
            for i in range(m.mtmd_input_chunks_size(chunks)):
                chunk = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    tokens = [ptr[j] for j in range(n.value)]
                    out.prompt_tokens.extend(tokens)
                    llama.eval(tokens)
                else:
                    new_past = lc.llama_pos(0)
                    code = m.mtmd_helper_eval_chunk_single(self.ctx, llama._ctx.ctx, chunk, lc.llama_pos(llama.n_tokens),
                                                           lc.llama_seq_id(0), llama.n_batch, False,
                                                           ctypes.byref(new_past))
                    if code != 0:
                        raise RuntimeError(f"libmtmd could not evaluate an image (code {code})")
                    out.image_positions.append(new_past.value - llama.n_tokens)
                    llama.n_tokens = new_past.value
        finally:
            m.mtmd_input_chunks_free(chunks)
        first = last = None
        while max_new_tokens > 0:
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(self.n_vocab,))
            token = int(np.argmax(logits))
            last = time.perf_counter()
            if first is None:
                first = last
                out.time_to_first_token = first - start
            out.tokens.append(token)
            if lc.llama_vocab_is_eog(self.vocab, token) or len(out.tokens) >= max_new_tokens:
                break
            llama.eval([token])
        out.decode_seconds = (last - first) if first is not None else 0.0
        return out
