"""Parse and validate what a teacher LLM wrote; reject anything that would make a bad record.

Three output shapes exist:

- `conversation`: `Question:` / `Answer:` blocks, exchanges separated by lines of `===`. A label
  may be followed by its text on the same line or on the next lines (both layouts occur in
  practice). The result is alternating human/gpt turns, `<image>` in the first human turn.
- `single`: one free-text answer (detail description), paired by the caller with a question drawn
  from that type's pool.
- `qa_pair`: one `Question:` block and one `Answer:` block that the teacher wrote together (complex
  reasoning, as in the paper); a reply without both is rejected.

Every failure raises `Rejected(reason, detail)`; `reason` is a short stable token that the
generator counts (`empty`, `truncated`, `no_pairs`, ...), so a run's summary says why outputs
were thrown away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGE_TOKEN = "<image>"

#: Output shapes a prompt file may ask for.
OUTPUT_KINDS = ("conversation", "single", "qa_pair")

_SEPARATOR = re.compile(r"^\s*={3,}\s*$")
_LABEL = re.compile(r"^\s*(?:\*\*|__)?(question|answer)\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*(.*)$", re.IGNORECASE)
_SPECIAL_TOKENS = re.compile(r"<\|[a-z_]+\|>|</s>|<s>|\[/?INST\]", re.IGNORECASE)
_MENTIONS_CONTEXT = re.compile(
    r"\bbounding[- ]box(es)?\b|\bcoordinates?\b|\bcaptions?\b|\[\s*[01]?\.\d+\s*,\s*[01]?\.\d+",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]{2,}")

#: A single answer needs at least this many words (letters only) to count as text.
MIN_SINGLE_WORDS = 5


class Rejected(ValueError):
    """The teacher's output cannot become a record. `reason` is a short token for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Exchange:
    question: str
    answer: str


def check_common(text: str | None, finish_reason: str | None = None) -> str:
    """Checks shared by every output shape; returns the stripped text."""
    if text is None or not text.strip():
        raise Rejected("empty", "the teacher returned no text")
    if finish_reason == "length":
        raise Rejected("truncated", "the completion hit the token limit")
    if IMAGE_TOKEN in text:
        raise Rejected("image_token", f"the output contains {IMAGE_TOKEN}")
    match = _SPECIAL_TOKENS.search(text)
    if match:
        raise Rejected("special_tokens", f"the output contains {match.group(0)!r}")
    match = _MENTIONS_CONTEXT.search(text)
    if match:
        raise Rejected("mentions_context", f"the output refers to the symbolic input ({match.group(0)!r})")
    return text.strip()


def _join(lines: list[str]) -> str:
    return "\n".join(lines).strip()


def parse_exchanges(text: str) -> list[Exchange]:
    """Split `Question:` / `Answer:` blocks into exchanges; raise `Rejected` on any malformation."""
    blocks: list[tuple[str, list[str]]] = []  # (label, lines)
    stray: list[str] = []
    for line in text.splitlines():
        if _SEPARATOR.match(line):
            continue
        label = _LABEL.match(line)
        if label:
            blocks.append((label.group(1).lower(), [label.group(2)]))
        elif blocks:
            blocks[-1][1].append(line)
        elif line.strip():
            stray.append(line.strip())
    if not blocks:
        raise Rejected("no_pairs", "no Question:/Answer: blocks found")
    if stray:
        raise Rejected("stray_text", f"text before the first block: {stray[0][:80]!r}")
    exchanges = []
    for i in range(0, len(blocks), 2):
        q_label, q_lines = blocks[i]
        if q_label != "question":
            raise Rejected("bad_order", f"block {i + 1} is an answer where a question was expected")
        if i + 1 >= len(blocks):
            raise Rejected("unanswered_question", "the last question has no answer")
        a_label, a_lines = blocks[i + 1]
        if a_label != "answer":
            raise Rejected("bad_order", f"block {i + 2} is a question where an answer was expected")
        question, answer = _join(q_lines), _join(a_lines)
        if not question or not answer:
            raise Rejected("empty_block", f"exchange {i // 2 + 1} has an empty question or answer")
        exchanges.append(Exchange(question, answer))
    return exchanges


def conversation_turns(exchanges: list[Exchange]) -> list[dict]:
    """Alternating human/gpt turns; the image placeholder opens the first human turn."""
    turns = []
    for i, ex in enumerate(exchanges):
        question = f"{IMAGE_TOKEN}\n{ex.question}" if i == 0 else ex.question
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": ex.answer})
    return turns


def parse_single(text: str) -> str:
    """A free-text answer: strip an optional leading `Answer:` label, reject Q/A markup."""
    lines = text.splitlines()
    first = _LABEL.match(lines[0]) if lines else None
    if first and first.group(1).lower() == "answer":
        lines = [first.group(2)] + lines[1:]
    if any(_LABEL.match(line) for line in lines) or any(_SEPARATOR.match(line) for line in lines):
        raise Rejected("qa_markup", "Question:/Answer: blocks where one free-text answer was expected")
    answer = _join(lines)
    if len(_WORD.findall(answer)) < MIN_SINGLE_WORDS:
        raise Rejected("too_short", f"fewer than {MIN_SINGLE_WORDS} words: {answer[:80]!r}")
    return answer


def parse_qa_pair(text: str) -> Exchange:
    """Exactly one question the teacher wrote and its answer; a reply without both (or with several) is rejected."""
    exchanges = parse_exchanges(text)
    if len(exchanges) != 1:
        raise Rejected("several_pairs", f"{len(exchanges)} Question:/Answer: pairs where one was asked for")
    (exchange,) = exchanges
    if len(_WORD.findall(exchange.answer)) < MIN_SINGLE_WORDS:
        raise Rejected("too_short", f"fewer than {MIN_SINGLE_WORDS} words: {exchange.answer[:80]!r}")
    return exchange


def one_turn_conversation(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}, {"from": "gpt", "value": answer}]


def parse_output(kind: str, text: str | None, finish_reason: str | None, question: str | None) -> list[dict]:
    """Teacher text → LLaVA turns for one record, or raise `Rejected`."""
    clean = check_common(text, finish_reason)
    if kind == "conversation":
        return conversation_turns(parse_exchanges(clean))
    if kind == "single":
        if question is None:
            raise ValueError("a single-answer type needs a question from its pool")
        return one_turn_conversation(question, parse_single(clean))
    if kind == "qa_pair":
        exchange = parse_qa_pair(clean)
        return one_turn_conversation(exchange.question, exchange.answer)
    raise ValueError(f"unknown output kind {kind!r}; expected one of {OUTPUT_KINDS}")
