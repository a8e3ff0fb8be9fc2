"""Data: the embedded synthetic 3D room benchmark, readers of real formats, and the DataModule."""

from lit3drft.data.prompts import CATEGORIES, CATEGORY_NAMES, COLORS, QUESTION_TYPES, Category, tokenizer_corpus
from lit3drft.data.sample import MODES, TASKS, Sample

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "COLORS",
    "MODES",
    "QUESTION_TYPES",
    "TASKS",
    "Category",
    "Sample",
    "tokenizer_corpus",
]
