"""Noun phrases of a caption, for the stage-1 concept filter.

With a spaCy English pipeline installed (`en_core_web_sm`, or one named in `SPACY_MODELS`), its
`noun_chunks` are used. Otherwise a small built-in extractor runs offline:

1. lower-case and tokenise into words and punctuation;
2. a phrase is a maximal run of words that are not "breakers": punctuation, determiners and
   quantifiers, pronouns, prepositions, conjunctions, auxiliaries and common caption verbs,
   adverbs, words ending in "-ing", and words longer than four letters ending in "-ed" (verb
   participles; "red", "bed" stay);
3. numbers (digits and number words) inside a run are dropped ("two red stars" -> "red stars");
4. the head (last word) is singularised with a few rules and a list of irregular plurals;
5. a phrase keeps at most its last four words.

Both extractors return each caption's phrases as a set of normalised strings ("red star").
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

SPACY_MODELS = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")

_DETERMINERS = set("""a an the this that these those some any each every no another other such both either
neither all few many several much more most own which what whose its his her their our my your""".split())
_PRONOUNS = set("""i me we us you he him she it they them one someone something somebody anyone anything
everyone everything nobody nothing who whom itself themselves himself herself""".split())
_PREPOSITIONS = set("""of in on at by for with without from to into onto upon over under above below beneath
behind beside besides between among around across along through near next toward towards against about
off out up down inside outside within via like than as after before during while until throughout
per amid atop""".split())
_CONJUNCTIONS = set("and or but nor so yet if because though although while whereas".split())
_VERBS = set("""is are was were be been being am has have had having do does did done can could will would
shall should may might must sits sit sat stands stand stood lies lie lay shows show showed shown appears
appear appeared contains contain contained looks look looked see seen saw sees features feature depicts
depict holds hold held rides ride rode eats eat ate plays play played goes go went gets get got takes
take took makes make made has gives give gave seems seem seemed remains remain stays stay wears wear
uses use waits wait flies fly walks walk runs run try tries tried fit fits
put puts set sets let lets keep keeps kept says say said""".split())
_ADVERBS = set("""very quite rather really too also just only not there here where when how why then now
together apart away back still almost nearly slightly partly mostly well again even far ever never
always often""".split())
_NUMBERS = set("""zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred dozen single
couple pair""".split())
_BREAKERS = _DETERMINERS | _PRONOUNS | _PREPOSITIONS | _CONJUNCTIONS | _VERBS | _ADVERBS
_ED_KEEP = {"colored", "coloured", "striped", "spotted", "checkered", "dotted", "shaped", "sized", "haired"}

_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "feet": "foot", "teeth": "tooth", "geese": "goose", "knives": "knife", "leaves": "leaf",
              "shelves": "shelf", "wolves": "wolf", "halves": "half", "lives": "life", "wives": "wife",
              "loaves": "loaf", "calves": "calf", "scissors": "scissors", "glasses": "glasses",
              "pants": "pants", "jeans": "jeans", "shorts": "shorts", "skis": "ski"}
_TOKEN = re.compile(r"[a-z]+(?:['\-][a-z]+)*|[0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]")


def singular(word: str) -> str:
    """Simple singular of a plural noun ("stars" -> "star", "boxes" -> "box", "ponies" -> "pony")."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ous")):
        return word[:-1]
    return word


def _is_breaker(tok: str) -> bool:
    if not re.match(r"[a-z]", tok):
        return not tok.isdigit()  # punctuation breaks; digits are dropped in-run
    if tok in _BREAKERS:
        return True
    if tok.endswith("ing") and len(tok) > 5:
        return True
    if tok.endswith("ed") and len(tok) > 4 and tok not in _ED_KEEP:
        return True
    return False


def simple_noun_phrases(text: str) -> set[str]:
    """Built-in extractor (see the module docstring for the rules)."""
    phrases: set[str] = set()
    run: list[str] = []

    def flush() -> None:
        words = [w for w in run if w not in _NUMBERS and not w[0].isdigit() and w != "'s"]
        run.clear()
        if not words:
            return
        words = words[-4:]
        words[-1] = singular(words[-1])
        phrases.add(" ".join(words))

    for tok in _TOKEN.findall(text.lower()):
        if tok.endswith("'s"):  # possessive ends a phrase: "the man's hat" -> "man", "hat"
            run.append(tok[:-2])
            flush()
            continue
        if _is_breaker(tok):
            flush()
        else:
            run.append(tok)
    flush()
    return phrases


@lru_cache(maxsize=1)
def _spacy_pipeline():
    try:
        import spacy  # type: ignore
    except Exception:
        return None
    for name in SPACY_MODELS:
        try:
            if spacy.util.is_package(name):
                return spacy.load(name, disable=["ner"])
        except Exception:
            continue
    return None


def spacy_available() -> bool:
    return _spacy_pipeline() is not None


def _spacy_phrases(docs: Iterable) -> list[set[str]]:
    out = []
    for doc in docs:
        found: set[str] = set()
        for chunk in doc.noun_chunks:
            words = [t for t in chunk if t.pos_ not in ("DET", "NUM", "PRON", "PUNCT")]
            if not words:
                continue
            text = [t.lower_ for t in words[:-1]] + [words[-1].lemma_.lower()]
            found.add(" ".join(text[-4:]))
        out.append(found)
    return out


def extractor_name(use_spacy: bool | None = None) -> str:
    return "spacy" if (use_spacy is not False and spacy_available()) else "builtin"


def noun_phrases_many(texts: list[str], use_spacy: bool | None = None) -> list[set[str]]:
    """Phrases for each text; spaCy when `use_spacy` is None/True and a pipeline is installed."""
    nlp = _spacy_pipeline() if use_spacy is not False else None
    if use_spacy and nlp is None:
        raise RuntimeError("spaCy with an English pipeline (e.g. en_core_web_sm) is not installed")
    if nlp is not None:
        return _spacy_phrases(nlp.pipe(texts, batch_size=256))
    return [simple_noun_phrases(t) for t in texts]
