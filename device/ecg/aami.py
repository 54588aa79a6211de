"""AAMI EC57 beat classes and the mapping from MIT-BIH annotation symbols."""

from __future__ import annotations

from typing import Final

from fedbeat.models.spec import CLASSES

SYMBOL_TO_CLASS: Final[dict[str, str]] = {
    **dict.fromkeys("NLRej", "N"),
    **dict.fromkeys("AaJS", "S"),
    **dict.fromkeys("VE", "V"),
    "F": "F",
    **dict.fromkeys("/fQ", "Q"),
}
"""Beat symbols by AAMI class (N: N L R e j; S: A a J S; V: V E; F: F; Q: / f Q). Symbols not
listed (rhythm changes, noise, comments) are not beats."""

CLASS_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(CLASSES)}
