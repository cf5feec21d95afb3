"""Conversation templates and rendering: structured messages -> `input_ids` and `labels` in one pass.

Every template turns messages into a list of pieces, each with a supervision rule; the renderer tokenizes
piece by piece and appends ids and labels together, so the loss mask can never drift from the ids. The
image placeholder becomes exactly `num_image_tokens` positions holding `IMAGE_TOKEN_ID` (or, for a model whose
images take a number of tokens that depends on their size, the count `image_tokens` gives for that image). Anything
inconsistent (roles out of order, a missing or extra image, an answer with no tokens) raises
`RenderError`; a sample is never silently left without supervision.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Iterable, Literal, Sequence

from vistune.errors import UserError

IGNORE_INDEX = -100
IMAGE_TOKEN_ID = -200
IMAGE_PLACEHOLDER = "<image>"

Role = Literal["system", "user", "assistant"]
Placement = Literal["front", "back", "random"]

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


class RenderError(ValueError):
    """A conversation that cannot be rendered consistently."""


class TokenizerMismatch(RenderError, UserError):
    """The rendered ids cannot equal the tokenizer's ids for the whole prompt; `position` is the first differing
    token. Commands print it as one line (exit 2)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Piece:
    """A run of text (or explicit ids) and how much of it is supervised.

    supervise: "none" | "all" | "first" (only the first token: an end-of-turn marker that leads a template's glue).
    """

    text: str = ""
    supervise: str = "none"
    ids: tuple[int, ...] | None = None
    image: bool = False


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]
    image_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each image's positions

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def messages_from_llava(conversations: Sequence[dict]) -> list[Message]:
    """LLaVA `conversations` ([{"from": "human"|"gpt", "value"}]) -> messages; raises RenderError on bad shape."""
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RenderError(f"turn {i} is not an object with 'from' and 'value'")
        role = LLAVA_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
        if role is None:
            raise RenderError(f"turn {i} has unknown speaker {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise RenderError(f"turn {i} value is not a string")
        messages.append(Message(role, turn["value"].strip()))
    return messages


def validate_messages(messages: Sequence[Message], *, for_generation: bool) -> None:
    """System first (optional), then user/assistant alternating from user; ends with assistant (training) or
    user (generation); no empty turns."""
    body = list(messages)
    if body and body[0].role == "system":
        body = body[1:]
    if not body:
        raise RenderError("conversation has no turns")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            if i == 0:
                raise RenderError(f"first turn must be from the human, got {m.role!r}")
            raise RenderError(f"roles do not alternate: turn {i} is {m.role!r}, expected {expected!r}")
        if not m.content.strip():
            raise RenderError(f"turn {i} ({m.role}) is empty")
    last = body[-1].role
    if for_generation and last != "user":
        raise RenderError("a prompt for generation must end with a user turn")
    if not for_generation and last != "assistant":
        raise RenderError("a training conversation must end with an assistant turn")


def place_image(messages: Sequence[Message], placement: Placement, rng: random.Random | None) -> list[Message]:
    """Move the image placeholder of a conversation with one image before or after its question. A conversation
    with several images keeps the author's layout: each image stays where its placeholder is."""
    out = list(messages)
    if sum(m.content.count(IMAGE_PLACEHOLDER) for m in out if m.role == "user") != 1:
        return out
    for i, m in enumerate(out):
        if m.role == "user" and IMAGE_PLACEHOLDER in m.content:
            question = m.content.replace(IMAGE_PLACEHOLDER, "").strip()
            if placement == "random":
                if rng is None:
                    raise ValueError("random image placement needs an rng")
                placement = "front" if rng.random() < 0.5 else "back"
            if not question:
                content = IMAGE_PLACEHOLDER
            elif placement == "front":
                content = f"{IMAGE_PLACEHOLDER}\n{question}"
            else:
                content = f"{question}\n{IMAGE_PLACEHOLDER}"
            out[i] = Message(m.role, content)
            return out
    return out


# --------------------------------------------------------------------------------------------------
# Templates: messages -> pieces


class Template:
    name: str = ""
    answer_prefix: str = ""
    """Text the template puts before every answer; supervised with it."""
    stop_strings: tuple[str, ...] = ()

    def pieces(self, messages: Sequence[Message], tokenizer, add_generation_prompt: bool) -> list[Piece]:
        raise NotImplementedError

    def end_of_turn_ids(self, tokenizer) -> list[int]:
        """Token ids that end an assistant turn (generation stops at them)."""
        return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _system_and_body(messages: Sequence[Message], default: str) -> tuple[str, list[Message]]:
    if messages and messages[0].role == "system":
        return messages[0].content, list(messages[1:])
    return default, list(messages)


def _special_id(tokenizer, token: str | None, what: str) -> int:
    if token is None:
        raise RenderError(f"this template needs the tokenizer's {what} token, which it does not define")
    return tokenizer.convert_tokens_to_ids(token)


class PlainTemplate(Template):
    """Stage 1: the image, then the caption and a newline; the instruction is dropped."""

    name = "plain"
    stop_strings = ("\n",)

    def pieces(self, messages, tokenizer, add_generation_prompt):
        _, body = _system_and_body(messages, "")
        if len(body) not in (1, 2) or body[0].role != "user":
            raise RenderError("the plain template takes one user turn (with the image) and one answer")
        images = body[0].content.count(IMAGE_PLACEHOLDER)
        if images != 1:
            raise RenderError(f"the plain template needs exactly one image in the user turn, found {images}")
        out = [Piece(image=True)]
        if len(body) == 2:
            out.append(Piece(body[1].content + "\n", "all"))
        elif not add_generation_prompt:
            raise RenderError("a training conversation must end with an assistant turn")
        return out

    def end_of_turn_ids(self, tokenizer):
        return super().end_of_turn_ids(tokenizer)


class SeparatorTemplate(Template):
    """Templates written as text with role tags (v0, vicuna_v1)."""

    system: str = ""
    user_tag: str = ""
    assistant_tag: str = ""
    system_suffix: str = ""
    user_suffix: str = ""

    def answer_end(self, tokenizer) -> Piece:
        raise NotImplementedError

    first_user_tag: str = ""
    """The user tag of the first turn (the text right after the system message), when it differs."""

    def pieces(self, messages, tokenizer, add_generation_prompt):
        system, body = _system_and_body(messages, self.system)
        out = [Piece(system + self.system_suffix)]
        for i, m in enumerate(body):
            if m.role == "user":
                tag = self.first_user_tag if i == 0 and self.first_user_tag else self.user_tag
                out += [Piece(tag), Piece(" " + m.content), Piece(self.user_suffix + self.assistant_tag)]
            else:
                out += [Piece(self.answer_prefix + m.content, "all"), self.answer_end(tokenizer)]
        if not add_generation_prompt and body and body[-1].role == "user":
            raise RenderError("a training conversation must end with an assistant turn")
        return out


class V0Template(SeparatorTemplate):
    """The paper's format: `SYSTEM\n\n### Human: …\n### Assistant: …\n###`, each answer closed by `\n###`."""

    name = "v0"
    system = V0_SYSTEM
    system_suffix = "\n\n###"
    user_tag = " Human:"
    user_suffix = "\n###"
    assistant_tag = " Assistant:"
    answer_prefix = " "
    stop_strings = ("###",)

    def answer_end(self, tokenizer):
        return Piece("\n###", "all")


class VicunaV1Template(SeparatorTemplate):
    """LLaVA v1/v1.5: `SYSTEM USER: … ASSISTANT: …</s>USER: … ASSISTANT: …</s>`."""

    name = "vicuna_v1"
    system = VICUNA_SYSTEM
    first_user_tag = " USER:"
    user_tag = "USER:"  # right after the previous answer's </s>, no space
    assistant_tag = " ASSISTANT:"
    answer_prefix = " "
    stop_strings = ("</s>",)

    def answer_end(self, tokenizer):
        return Piece(ids=(_special_id(tokenizer, tokenizer.eos_token, "end-of-sequence"),), supervise="all")


class Llama2Template(Template):
    """`[INST] <<SYS>>\\n…\\n<</SYS>>\\n\\n… [/INST] answer </s><s>[INST] … [/INST]`."""

    name = "llama_2"
    answer_prefix = " "
    stop_strings = ("</s>",)

    def pieces(self, messages, tokenizer, add_generation_prompt):
        system, body = _system_and_body(messages, LLAMA2_SYSTEM)
        bos = _special_id(tokenizer, tokenizer.bos_token, "beginning-of-sequence")
        eos = _special_id(tokenizer, tokenizer.eos_token, "end-of-sequence")
        out: list[Piece] = []
        for i, m in enumerate(body):
            if m.role == "user":
                if i > 0:
                    out.append(Piece(ids=(bos,)))
                if i == 0 and system:
                    out += [Piece(f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n"), Piece(m.content)]
                else:
                    out += [Piece("[INST]"), Piece(" " + m.content)]
                out.append(Piece(" [/INST]"))
            else:
                out += [Piece(self.answer_prefix + m.content + " ", "all"), Piece(ids=(eos,), supervise="all")]
        if not add_generation_prompt and body and body[-1].role == "user":
            raise RenderError("a training conversation must end with an assistant turn")
        return out


class ChatTemplate(Template):
    """The tokenizer's own chat template (ChatML for SmolLM2/Qwen, Llama 3's, …).

    The template is rendered once per role sequence with markers in place of contents; the text between
    markers is the template's glue. Answers are supervised, and so is the first token of the glue that
    follows each answer (the template's end-of-turn token, e.g. `<|im_end|>`).
    """

    name = "chat_template"

    def pieces(self, messages, tokenizer, add_generation_prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise RenderError("the tokenizer has no chat template; choose another template")
        glue = list(_chat_layout(tokenizer, tuple(m.role for m in messages), add_generation_prompt))
        # spaces that end the text before an answer belong to the answer's first token (SentencePiece's `▁The`,
        # byte-level BPE's `ĠThe`): they move into the answer, and a generation prompt ends before them
        lead = ["" for _ in messages]
        for i, m in enumerate(messages):
            if m.role == "assistant":
                stripped = glue[i].rstrip(" ")
                lead[i], glue[i] = glue[i][len(stripped):], stripped
        if add_generation_prompt and messages[-1].role == "user":
            glue[-1] = glue[-1].rstrip(" ")
        out = [Piece(glue[0])]
        for m, space, after in zip(messages, lead, glue[1:]):
            if m.role == "assistant":
                out += [Piece(space + m.content, "all"), Piece(after, "first")]
            else:
                out += [Piece(m.content), Piece(after)]
        return out

    def end_of_turn_ids(self, tokenizer):
        glue = _chat_layout(tokenizer, ("user", "assistant"), False)
        ids = tokenizer.encode(glue[2], add_special_tokens=False)
        eot = [ids[0]] if ids else []
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eot:
            eot.append(tokenizer.eos_token_id)
        return eot


def _marker(i: int) -> str:
    return f"\u27e6vistune-content-{i}\u27e7"


@lru_cache(maxsize=256)
def _chat_layout_cached(template: str, tok_key: int, roles: tuple[str, ...], add_generation_prompt: bool,
                        tokenizer_ref) -> tuple[str, ...]:
    tokenizer = tokenizer_ref()
    msgs = [{"role": r, "content": _marker(i)} for i, r in enumerate(roles)]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    parts = re.split("\u27e6vistune-content-(\\d+)\u27e7", text)
    found = [int(x) for x in parts[1::2]]
    if found != list(range(len(roles))):
        raise RenderError(
            "the tokenizer's chat template does not place each message's content exactly once and in order "
            f"(found contents {found} for roles {list(roles)}); choose another template"
        )
    return tuple(parts[0::2])


def _chat_layout(tokenizer, roles: tuple[str, ...], add_generation_prompt: bool) -> tuple[str, ...]:
    import weakref

    return _chat_layout_cached(tokenizer.chat_template, id(tokenizer), roles, add_generation_prompt,
                               weakref.ref(tokenizer))


TEMPLATES: dict[str, Template] = {
    t.name: t for t in (PlainTemplate(), V0Template(), VicunaV1Template(), Llama2Template(), ChatTemplate())
}
TEMPLATE_NAMES = tuple(TEMPLATES)


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; expected one of {list(TEMPLATES)}") from None


# --------------------------------------------------------------------------------------------------
# Rendering: pieces -> ids + labels


def _is_special(tokenizer, token_id: int) -> bool:
    if token_id in set(tokenizer.all_special_ids):
        return True
    added = tokenizer.added_tokens_decoder.get(token_id)
    return bool(added is not None and added.special)


class Renderer:
    """Renders messages with one template and tokenizer; `num_image_tokens` positions per image."""

    def __init__(self, tokenizer, template: str | Template, num_image_tokens: int, system: str | None = None,
                 use_offsets: bool = True, image_tokens: Callable[[tuple[int, int]], int] | None = None) -> None:
        if num_image_tokens <= 0:
            raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        self.num_image_tokens = num_image_tokens
        self.image_tokens = image_tokens
        """Image positions of an image of a given (width, height) (anyres); None: `num_image_tokens` for every
        image. A render given no image sizes uses `num_image_tokens` (the model's splice check refuses such ids
        with real images of another count)."""
        self.system = system
        """System message for conversations that bring none (None: the template's default)."""
        self.use_offsets = use_offsets
        """Find piece boundaries from a fast tokenizer's character offsets (one tokenizer call per render); False:
        by tokenizing the text up to each boundary (any tokenizer; slower)."""
        probe = tokenizer("a", add_special_tokens=True).input_ids
        self.bos_id: int | None = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id
            else None
        )

    def image_token_count(self, size: tuple[int, int]) -> int:
        """Image positions of an image of `size` (width, height)."""
        return self.num_image_tokens if self.image_tokens is None else self.image_tokens(tuple(size))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.template.stop_strings

    def end_of_turn_ids(self) -> list[int]:
        return self.template.end_of_turn_ids(self.tokenizer)

    def render(
        self,
        messages: Sequence[Message],
        *,
        num_images: int | None = None,
        placement: Placement = "front",
        rng: random.Random | None = None,
        add_generation_prompt: bool = False,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> Rendered:
        """Render a conversation. Training: the last turn is the assistant's. Generation: the last turn is the
        user's and the output ends where the answer starts. `num_images`, when given, must match the
        placeholders. `image_sizes`: each image's (width, height), for a renderer with `image_tokens`."""
        validate_messages(messages, for_generation=add_generation_prompt)
        if self.system is not None and messages[0].role != "system":
            messages = [Message("system", self.system), *messages]
        found = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages if m.role == "user")
        if any(IMAGE_PLACEHOLDER in m.content for m in messages if m.role != "user"):
            raise RenderError("the image placeholder may only appear in user turns")
        if num_images is not None and found != num_images:
            raise RenderError(f"the text has {found} image placeholder(s) but {num_images} image(s) were given")
        counts = None
        if image_sizes is not None and self.image_tokens is not None:
            if len(image_sizes) != found:
                raise RenderError(f"the text has {found} image placeholder(s) but {len(image_sizes)} image size(s) "
                                  "were given")
            counts = [self.image_tokens(tuple(size)) for size in image_sizes]
        messages = place_image(messages, placement, rng)
        pieces = self.template.pieces(messages, self.tokenizer, add_generation_prompt)
        return self._tokenize(pieces, add_generation_prompt, counts)

    def _tokenize(self, pieces: Iterable[Piece], for_generation: bool, counts: Sequence[int] | None = None
                  ) -> Rendered:
        """Tokenize the whole rendered text at once (as the tokenizer would see the prompt, each image one special
        token), then find every piece boundary in the ids by tokenizing the text up to it: a boundary the tokenizer
        merges across raises, so labels are always exactly the supervised pieces' tokens."""
        runs = _merge_runs(self._as_text(p) for p in _split_images(pieces))
        texts = [self.image_stand_in[0] if r.image else r.text for r in runs]
        full = "".join(texts)
        cuts = list(itertools.accumulate(len(t) for t in texts))[:-1]
        if self.use_offsets and getattr(self.tokenizer, "is_fast", False):
            encoding = self.tokenizer.backend_tokenizer.encode(full, add_special_tokens=False)
            ids = list(encoding.ids)
            bounds = self._boundaries_from_offsets(full, cuts, ids, encoding.offsets)
        else:
            ids = self.tokenizer.encode(full, add_special_tokens=False) if full else []
            bounds = self._boundaries(full, cuts, ids)
        bounds = [0, *bounds, len(ids)]  # token index where each run starts, then the end
        out_ids: list[int] = [] if self.bos_id is None or ids[:1] == [self.bos_id] else [self.bos_id]
        out_labels: list[int] = [IGNORE_INDEX] * len(out_ids)
        spans: list[tuple[int, int]] = []
        for run, start, stop in zip(runs, bounds, bounds[1:]):
            tokens = ids[start:stop]
            if run.image:
                if tokens != [self.image_stand_in[1]]:
                    raise RenderError(f"the image placeholder did not tokenize to one token ({tokens})")
                n = self.num_image_tokens if counts is None else counts[len(spans)]
                spans.append((len(out_ids), len(out_ids) + n))
                out_ids.extend([IMAGE_TOKEN_ID] * n)
                out_labels.extend([IGNORE_INDEX] * n)
                continue
            out_ids.extend(tokens)
            out_labels.extend(self._labels(run.supervise, tokens, for_generation))
        if not for_generation and not any(label != IGNORE_INDEX for label in out_labels):
            raise RenderError("the rendered sample has no supervised tokens")
        return Rendered(out_ids, out_labels, spans)

    def text(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        """The whole rendered text (BOS not included; images as `<image>`), as the tokenizer is meant to see it."""
        validate_messages(messages, for_generation=add_generation_prompt)
        if self.system is not None and messages[0].role != "system":
            messages = [Message("system", self.system), *messages]
        pieces = self.template.pieces(place_image(messages, "front", None), self.tokenizer, add_generation_prompt)
        return "".join(IMAGE_PLACEHOLDER if p.image else self._as_text(p).text for p in _split_images(pieces))

    @cached_property
    def image_stand_in(self) -> tuple[str, int]:
        """The special token (text, id) that stands for an image while the text is tokenized (`<image>` when the
        tokenizer has it, else its unknown, end, begin or padding token): the text around an image is split there,
        as llava-hf's processor splits it at its `<image>` token."""
        return _image_stand_in(self.tokenizer)

    def _as_text(self, piece: Piece) -> Piece:
        """A piece given as ids (the template's special tokens) written as their text, to be tokenized in place."""
        if piece.ids is None:
            return piece
        for i in piece.ids:
            if not _is_special(self.tokenizer, i):
                raise RenderError(f"the template inserts token id {i}, which is not a special token")
        return Piece("".join(self.tokenizer.convert_ids_to_tokens(list(piece.ids))), piece.supervise)

    def _boundaries_from_offsets(self, full: str, cuts: list[int], ids: list[int],
                                 offsets: list[tuple[int, int]]) -> list[int]:
        """Tokens before each cut, from the characters each token covers (a zero-width token, such as a dummy
        prefix, belongs to the text after it); raises `TokenizerMismatch` where a token spans a cut."""
        out = []
        for cut in cuts:
            n = bisect.bisect_left([start for start, _ in offsets], cut)
            if n and offsets[n - 1][1] > cut:
                self._mismatch(full, cut, ids, n - 1, None)
            out.append(n)
        return out

    def _mismatch(self, full: str, cut: int, ids: list[int], k: int, head: list[int] | None) -> None:
        ends = f"the text before it tokenizes to {self.tokenizer.convert_ids_to_tokens(head[k:k + 1])} there" if head \
            else "that token spans the boundary"
        raise TokenizerMismatch(
            f"the tokenizer merges across a template boundary at character {cut} "
            f"({full[max(0, cut - 20):cut]!r} | {full[cut:cut + 20]!r}): token {k} of the whole text is "
            f"{self.tokenizer.convert_ids_to_tokens(ids[k:k + 1])} and {ends}; the answer's tokens cannot be told "
            "apart", k + (self.bos_id is not None))

    def _boundaries(self, full: str, cuts: list[int], ids: list[int]) -> list[int]:
        """Number of tokens the text up to each cut takes; raises `TokenizerMismatch` where the whole text's ids do
        not start with them (the tokenizer merges across that boundary)."""
        if not cuts:
            return []
        heads = self.tokenizer([full[:c] for c in cuts], add_special_tokens=False).input_ids
        for cut, head in zip(cuts, heads):
            if ids[: len(head)] != head:
                k = next((i for i, (a, b) in enumerate(zip(ids, head)) if a != b), len(ids))
                self._mismatch(full, cut, ids, k, head)
        return [len(h) for h in heads]

    def _labels(self, supervise: str, tokens: list[int], for_generation: bool) -> list[int]:
        if supervise == "all":
            if not tokens:
                raise RenderError("an assistant answer rendered to no tokens")
            return list(tokens)
        if supervise == "first":
            if not tokens:
                if for_generation:
                    return []
                raise RenderError("the template puts no end-of-turn marker after an assistant answer")
            if not _is_special(self.tokenizer, tokens[0]):
                raise RenderError(
                    "the chat template's text after an answer does not start with a special end-of-turn "
                    f"token (it starts with {self.tokenizer.convert_ids_to_tokens(tokens[0])!r})"
                )
            return tokens[:1] + [IGNORE_INDEX] * (len(tokens) - 1)
        return [IGNORE_INDEX] * len(tokens)


def _image_stand_in(tokenizer) -> tuple[str, int]:
    candidates = [IMAGE_PLACEHOLDER, tokenizer.unk_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token]
    for token in candidates:
        if token is None:
            continue
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) == 1 and _is_special(tokenizer, ids[0]):
            return token, ids[0]
    raise RenderError("the tokenizer has no special token to stand for an image while tokenizing")


def _merge_runs(pieces: Iterable[Piece]) -> list[Piece]:
    """Adjacent text pieces with the same supervision joined (their boundary needs no locating)."""
    out: list[Piece] = []
    for p in pieces:
        joins = out and not out[-1].image and not p.image and (
            out[-1].supervise == p.supervise != "first" or (out[-1].supervise, p.supervise) == ("first", "none"))
        if joins:  # ("first" then "none": still only the run's first token is supervised)
            out[-1] = Piece(out[-1].text + p.text, out[-1].supervise)
        else:
            out.append(p)
    return out


def _split_images(pieces: Iterable[Piece]) -> Iterable[Piece]:
    """Text pieces holding the image placeholder become text / image / text pieces."""
    for piece in pieces:
        if piece.ids is not None or piece.image or IMAGE_PLACEHOLDER not in piece.text:
            yield piece
            continue
        if piece.supervise != "none":
            raise RenderError("an assistant answer contains the image placeholder")
        for k, text in enumerate(piece.text.split(IMAGE_PLACEHOLDER)):
            if k > 0:
                yield Piece(image=True)
            if text:
                yield Piece(text)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """The first position where two id lists differ (the shorter one's length when one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


PROBES: tuple[tuple[Message, ...], ...] = (
    (Message("user", "<image>\nWhat is in the picture?"), Message("assistant", "A red square beside 2 circles.")),
    (Message("system", "You answer briefly."), Message("user", "Is there a cat?\n<image>"), Message("assistant", "No.")),
    (Message("user", "<image>\nCount the shapes."), Message("assistant", "There are 12 shapes, e.g. \"a star\"."),
     Message("user", "  Which one is bigger?"), Message("assistant", "\nThe circle (on the left) is bigger.")),
)
"""Conversations with the shapes that trip piecewise tokenization: text after an image, a leading space or
newline, digits, quotes, several rounds, a system message."""


def check_whole_prompt_tokenization(renderer: Renderer, conversations: Iterable[Sequence[Message]] = PROBES) -> int:
    """Render each conversation (training form, and each prompt for generation) and compare the ids with what the
    tokenizer gives for the whole rendered text (each image as one special token, BOS as the tokenizer adds it);
    raise `TokenizerMismatch` naming the first differing position. Returns the number of renderings checked."""
    tok, checked = renderer.tokenizer, 0
    exact = Renderer(tok, renderer.template, renderer.num_image_tokens, renderer.system, use_offsets=False)
    stand_in, stand_in_id = renderer.image_stand_in
    for conversation in conversations:
        messages = list(conversation)
        forms = [(messages, False)] + [(messages[:k + 1], True) for k, m in enumerate(messages) if m.role == "user"]
        for msgs, gen in forms:
            try:
                rendered = renderer.render(msgs, add_generation_prompt=gen)
                by_prefix = exact.render(msgs, add_generation_prompt=gen)
            except TokenizerMismatch:
                raise
            except RenderError:
                continue  # a shape this template does not take (plain: one turn)
            if (by_prefix.input_ids, by_prefix.labels) != (rendered.input_ids, rendered.labels):
                pos = first_difference(rendered.labels, by_prefix.labels)
                raise TokenizerMismatch(
                    f"this tokenizer's character offsets do not locate the template's boundaries (first difference "
                    f"in the labels at token {pos}); render with use_offsets=False", pos)
            text = renderer.text(msgs, add_generation_prompt=gen).replace(IMAGE_PLACEHOLDER, stand_in)
            expected = tok(text).input_ids
            got, k = [], 0
            while k < len(rendered.input_ids):
                if rendered.input_ids[k] == IMAGE_TOKEN_ID:
                    got.append(stand_in_id)
                    k += renderer.num_image_tokens
                else:
                    got.append(rendered.input_ids[k])
                    k += 1
            if got != expected:
                pos = first_difference(got, expected)
                raise TokenizerMismatch(
                    f"template {renderer.template.name!r} with this tokenizer does not give the tokenizer's ids for "
                    f"the whole prompt: first difference at token {pos} (rendered "
                    f"{tok.convert_ids_to_tokens(got[pos:pos + 3])}, whole prompt "
                    f"{tok.convert_ids_to_tokens(expected[pos:pos + 3])}) in {text!r}", pos)
            checked += 1
    return checked


def sample_rng(seed: int, index: int, epoch: int = 0) -> random.Random:
    """A per-sample rng that depends only on (seed, epoch, index): reproducible in any worker order."""
    return random.Random(f"vistune:{seed}:{epoch}:{index}")


def conversation_messages(prompt: str, history: Sequence[tuple[str, str]] = (), has_image: bool = True,
                          system: str | None = None, image_turns: Sequence[int] | None = None) -> list[Message]:
    """(question, answer) turns, then the new prompt; the image placeholder leads the first question.

    image_turns: for each image, in order, the question it belongs to (0 is the first question of `history`,
    `len(history)` the new prompt); it replaces `has_image`. A question's images lead it, one `<image>` line
    each, so `image_turns=[0]` is `has_image=True`."""
    questions = [*history, (prompt, None)]
    if image_turns is None:
        image_turns = [0] if has_image else []
    image_turns = list(image_turns)
    if any(not 0 <= t < len(questions) for t in image_turns) or image_turns != sorted(image_turns):
        raise ValueError(f"image_turns must be questions 0..{len(questions) - 1} in order, got {image_turns}")
    messages = [Message("system", system)] if system else []
    for i, (question, answer) in enumerate(questions):
        question = question.replace(IMAGE_PLACEHOLDER, "").strip()
        question = "\n".join([IMAGE_PLACEHOLDER] * image_turns.count(i) + [question])
        messages.append(Message("user", question))
        if answer is not None:
            messages.append(Message("assistant", answer))
    return messages
