"""Referring expressions of a caption: spaCy noun chunks (FG-CLIP Sec. 3.2 parses them with spaCy)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Expression:
    """One referring expression of a caption.

    Attributes:
        text: the noun chunk, e.g. ``"a black dog"`` (the region's ``short_expr`` and the
            grounding query).
        head: its head noun, e.g. ``"dog"``: the object name hard negatives must keep.
        phrase: the chunk with the rest of its syntactic subtree, e.g. ``"a black dog with a red
            collar"`` (the ``long_expr`` when no region description is generated).
    """

    text: str
    head: str
    phrase: str


def extract_expressions(doc, max_expressions: int | None = None) -> list[Expression]:
    """Noun chunks of a parsed spaCy ``Doc`` in caption order; pronouns and repeats are left out."""
    found: dict[str, Expression] = {}
    for chunk in doc.noun_chunks:
        if chunk.root.pos_ == "PRON":
            continue
        text = chunk.text.strip()
        phrase = " ".join(token.text for token in chunk.root.subtree).strip()
        found.setdefault(text.lower(), Expression(text, chunk.root.text, phrase))
    expressions = list(found.values())
    return expressions if max_expressions is None else expressions[:max_expressions]


class SpacyExpressionParser:
    """Caption -> :class:`Expression` list with a spaCy pipeline that has a dependency parser.

    Args:
        nlp: a loaded pipeline (any callable ``text -> Doc``) or a package name to
            ``spacy.load`` (``python -m spacy download en_core_web_sm`` installs the default).
        max_expressions: at most this many per caption.
    """

    def __init__(self, nlp: str | Callable = "en_core_web_sm", max_expressions: int | None = 8):
        if isinstance(nlp, str):
            import spacy

            nlp = spacy.load(nlp)
        self.nlp = nlp
        self.max_expressions = max_expressions

    def __call__(self, caption: str) -> list[Expression]:
        return extract_expressions(self.nlp(caption), self.max_expressions)
