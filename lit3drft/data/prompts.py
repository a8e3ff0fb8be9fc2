"""Prompt templates, answer formats and the object categories of the embedded benchmark.

Everything a model reads or writes as text is defined here, so the generator, the readers and the
tokenizer corpus agree. Detection uses VG-LLM's exact prompt (see PAPER.md); grounding follows VG-LLM's
ScanRefer rows ("Frame-i: " before each frame, answer ``{"frame": k, "bbox_3d": [...]}``); spatial
questions follow VSI-Bench's templates and its pre/post prompts (lmms-eval ``vsibench``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from lit3drft.data.shapes import PARTS, SOLID, Part
from lit3drft.rewards.spatial import NUMERIC_TYPES, QUESTION_TYPES

# ----------------------------------------------------------------------------------------------------------------------
# Categories (ScanNet class names) with size priors in metres, plausible colours and a shape of parts
# ----------------------------------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (50, 160, 60),
    "blue": (40, 80, 200),
    "yellow": (230, 200, 40),
    "white": (235, 235, 230),
    "black": (35, 35, 40),
    "brown": (120, 75, 40),
    "grey": (130, 130, 135),
    "orange": (235, 130, 30),
    "purple": (130, 60, 170),
    "pink": (235, 140, 180),
    "beige": (215, 195, 150),
}
"""Named RGB colours used for objects; names appear in referring expressions."""


@dataclass(frozen=True)
class Category:
    """An object category: mean size ``(x, y, z)`` in metres (z is height), relative jitter, colours and shape."""

    name: str
    size: tuple[float, float, float]
    jitter: float
    colors: tuple[str, ...]
    against_wall: bool = False
    """Tall or wall-bound furniture is placed along a wall, facing into the room (local +y into the room)."""
    parts: tuple[Part, ...] = SOLID
    """Boxes of its shape in fractions of the object's box (``lit3drft.data.shapes``); their union's bounds are the
    whole box, so the annotation is the composite's bounding box."""


def _category(name: str, size: tuple[float, float, float], jitter: float, colors: tuple[str, ...],
              against_wall: bool = False) -> Category:  # fmt: skip
    return Category(name, size, jitter, colors, against_wall, PARTS[name])


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        _category("chair", (0.50, 0.50, 0.90), 0.15, ("red", "blue", "black", "brown", "green", "white")),
        _category("table", (1.20, 0.80, 0.75), 0.25, ("brown", "white", "black", "beige")),
        _category("bed", (1.60, 2.05, 1.00), 0.15, ("white", "blue", "beige", "grey"), True),
        _category("sofa", (2.00, 0.90, 0.85), 0.20, ("grey", "blue", "green", "red", "beige"), True),
        _category("cabinet", (0.90, 0.50, 1.10), 0.25, ("brown", "white", "grey"), True),
        _category("desk", (1.30, 0.70, 0.75), 0.15, ("brown", "white", "black"), True),
        _category("bookshelf", (0.90, 0.35, 1.90), 0.15, ("brown", "white", "black"), True),
        _category("toilet", (0.40, 0.65, 0.80), 0.10, ("white", "beige"), True),
        _category("sink", (0.60, 0.50, 0.90), 0.15, ("white", "grey"), True),
        _category("bathtub", (0.75, 1.60, 0.60), 0.10, ("white", "beige"), True),
        _category("refrigerator", (0.75, 0.70, 1.80), 0.10, ("white", "grey", "black"), True),
        _category("nightstand", (0.45, 0.40, 0.55), 0.15, ("brown", "white", "black")),
        _category("lamp", (0.35, 0.35, 1.50), 0.20, ("yellow", "white", "black", "orange")),
        _category("trash can", (0.35, 0.35, 0.55), 0.20, ("grey", "black", "green", "blue")),
        _category("armchair", (0.85, 0.85, 0.90), 0.15, ("red", "green", "purple", "pink", "orange")),
        _category("ottoman", (0.60, 0.60, 0.45), 0.20, ("orange", "purple", "pink", "yellow")),
    )
}
"""Object categories of the embedded benchmark, names from ScanNet's classes (the tokenizer is trained on them).

Each has a shape of its own (``lit3drft.data.shapes.PARTS``): no two share a part layout, so the label can be read
off the pixels; colours are attributes (referring expressions use them), not the label."""

CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)
"""``CATEGORY_NAMES[k]`` is category ``k`` of ``SceneObject.category_id`` (class ``1 + k`` of ``category_map``)."""

# ----------------------------------------------------------------------------------------------------------------------
# Task prompts
# ----------------------------------------------------------------------------------------------------------------------

IMAGE_TOKEN = "<image>"
"""Placeholder for one frame in VG-LLM ``conversations`` (Qwen-VL fine-tuning format)."""

DETECTION_PROMPT = (
    "Detect the 3D bounding boxes in the camera coordinate system of the first frame. Output a json list where "
    'each entry contains the object name in "label" and its 3D bounding box in "bbox_3d". The 3D bounding box '
    "format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, roll, pitch]."
)
"""VG-LLM's exact 3D video detection prompt (PAPER.md)."""

GROUNDING_PROMPT = (
    "Localize the frame in the video where the object described in the text appears largest.\n"
    "Text: {description}\n"
    'Output a JSON dictionary with the frame index in "frame" and its 3D bounding box in "bbox_3d" in the '
    "frame's coordinates. The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, "
    "z_size, yaw, roll, pitch]."
)
"""Grounding prompt (VG-LLM's ScanRefer wording, with the paper's "largest" answer frame)."""


def grounding_question(description: str) -> str:
    """``GROUNDING_PROMPT`` for a referring expression, written as a sentence (first letter upper-cased, a full
    stop): the benchmark's grounding rows and the pretraining stream's grounding clips ask it alike."""
    return GROUNDING_PROMPT.format(description=description[0].upper() + description[1:] + ".")


def frame_label(i: int) -> str:
    """Text placed before frame ``i`` (0-based) of a grounding sample: ``"Frame-3: "``."""
    return f"Frame-{i}: "


VSI_PRE_PROMPT = "These are frames of a video."
VSI_NA_POST_PROMPT = "Please answer the question using a single word or phrase."
VSI_MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."

# VSI-Bench's question types are defined once, beside the metric that scores them.
NUMERICAL_QUESTION_TYPES = NUMERIC_TYPES
MULTIPLE_CHOICE_QUESTION_TYPES = tuple(t for t in QUESTION_TYPES if t not in NUMERIC_TYPES)

VSI_TEMPLATES: dict[str, str] = {
    "object_counting": "How many {category}(s) are in this room?",
    "object_abs_distance": (
        "Measuring from the closest point of each object, what is the direct distance between the {a} and the {b} "
        "(in meters)?"
    ),
    "object_size_estimation": (
        "What is the length of the longest dimension (length, width, or height) of the {category}, measured in "
        "centimeters?"
    ),
    "room_size_estimation": (
        "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size of the "
        "combined space."
    ),
    "object_rel_distance": (
        "Measuring from the closest point of each object, which of these objects ({choices}) is the closest to the "
        "{category}?"
    ),
    "object_rel_direction_easy": (
        "If I am standing by the {position} and facing the {facing}, is the {query} to the left or the right of "
        "the {facing}?"
    ),
    "object_rel_direction_medium": (
        "If I am standing by the {position} and facing the {facing}, is the {query} to my left, right, or back? "
        "An object is to my back if I would have to turn at least 135 degrees in order to face it."
    ),
    "object_rel_direction_hard": (
        "If I am standing by the {position} and facing the {facing}, is the {query} to my front-left, front-right, "
        "back-left, or back-right? The directions refer to the quadrants of a Cartesian plane (if I am standing at "
        "the origin and facing along the positive y-axis)."
    ),
    "route_planning": (
        "You are a robot beginning at the {start} facing the {facing}. You want to navigate to the {goal}. You "
        "will perform the following actions (Note: for each [please fill in], choose either 'turn back,' 'turn "
        "left,' or 'turn right.'): {steps} You have reached the final destination."
    ),
    "obj_appearance_order": (
        "What will be the first-time appearance order of the following categories in the video: {categories}?"
    ),
}
"""VSI-Bench question templates, one per question type."""

OPTION_LETTERS = ("A", "B", "C", "D")


def format_options(choices: list[str]) -> list[str]:
    """VSI-Bench option strings: ``["A. left", "B. right"]``."""
    return [f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(choices)]


def vsi_prompt(question: str, options: list[str] | None) -> str:
    """The full VSI-Bench user text (lmms-eval ``vsibench_doc_to_text``) for a question and its options."""
    if options:
        return "\n".join([VSI_PRE_PROMPT, question, "Options:\n" + "\n".join(options), VSI_MCA_POST_PROMPT])
    return "\n".join([VSI_PRE_PROMPT, question, VSI_NA_POST_PROMPT])


# ----------------------------------------------------------------------------------------------------------------------
# Answer formats (CONTRACTS.md "Completion format")
# ----------------------------------------------------------------------------------------------------------------------

DA_INSTRUCTION = "Output the final answer inside <answer> </answer> tags."
"""Appended to the prompt in direct-answer mode."""
TA_INSTRUCTION = (
    "First think about the question step by step inside <think> </think> tags, then output the final answer "
    "inside <answer> </answer> tags."
)
"""Appended to the prompt in think-then-answer mode."""


def mode_instruction(mode: str) -> str:
    """The output-format instruction for ``mode`` (``da`` or ``ta``)."""
    if mode not in ("da", "ta"):
        raise ValueError(f"unknown mode {mode!r}; valid: 'da', 'ta'")
    return DA_INSTRUCTION if mode == "da" else TA_INSTRUCTION


def full_prompt(task_prompt: str, mode: str) -> str:
    """Task prompt followed by the mode's output-format instruction (what ``Sample.prompt`` holds)."""
    return f"{task_prompt}\n{mode_instruction(mode)}"


def format_answer(answer: str, mode: str, think: str | None = None) -> str:
    """Wrap an answer body in tags: ``<answer>..</answer>``, preceded by ``<think>..</think>`` in TA mode."""
    if mode == "ta":
        return f"<think>{think or ''}</think><answer>{answer}</answer>"
    return f"<answer>{answer}</answer>"


def _r2(values) -> list[float]:
    return [round(float(v), 2) + 0.0 for v in values]  # + 0.0 turns -0.0 into 0.0


def detection_answer(boxes: list[list[float]], labels: list[str]) -> str:
    """JSON list ``[{"label": .., "bbox_3d": [9 numbers]}]``, numbers rounded to 2 decimals."""
    return json.dumps([{"label": lab, "bbox_3d": _r2(b)} for b, lab in zip(boxes, labels)])


def grounding_answer(frame: int, bbox_3d: list[float]) -> str:
    """JSON dict ``{"frame": k, "bbox_3d": [9 numbers]}``, numbers rounded to 2 decimals."""
    return json.dumps({"frame": int(frame), "bbox_3d": _r2(bbox_3d)})


def format_number(x: float) -> str:
    """A numerical VSI answer as text: integers without decimals, others with up to 2."""
    x = round(float(x), 2)
    return str(int(x)) if x == int(x) else f"{x:g}"


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer corpus
# ----------------------------------------------------------------------------------------------------------------------


def _rand_box(rng: random.Random) -> list[float]:
    return [
        rng.uniform(-3, 3),
        rng.uniform(-1.5, 1.5),
        rng.uniform(0.3, 6),
        rng.uniform(0.2, 2.2),
        rng.uniform(0.2, 2.2),
        rng.uniform(0.2, 2.2),
        rng.uniform(-3.14, 3.14),
        rng.uniform(-1.6, 1.6),
        rng.uniform(-3.14, 3.14),
    ]


def _corpus_item(rng: random.Random) -> str:
    cats = list(CATEGORIES)
    mode = rng.choice(("da", "ta"))
    kind = rng.choice(("detection", "grounding", "spatial", "spatial"))
    if kind == "detection":
        n = rng.randint(0, 8)
        labels = [rng.choice(cats) for _ in range(n)]
        body = detection_answer([_rand_box(rng) for _ in labels], labels)
        prompt = IMAGE_TOKEN * rng.choice((4, 6)) + "\n" + full_prompt(DETECTION_PROMPT, mode)
        think = f"I can see {n} objects: " + ", ".join(labels) + "."
    elif kind == "grounding":
        a, b = rng.sample(cats, 2)
        desc = f"the {rng.choice(list(COLORS))} {a} closest to the {rng.choice(list(COLORS))} {b}"
        nf = rng.choice((8, 16, 32))
        frames = "".join(frame_label(i) + IMAGE_TOKEN for i in range(nf))
        prompt = frames + "\n" + full_prompt(GROUNDING_PROMPT.format(description=desc.capitalize()), mode)
        k = rng.randrange(nf)
        body = grounding_answer(k, _rand_box(rng))
        think = f"The {a} is largest in frame {k}, {rng.uniform(0.5, 5):.2f} m in front of the camera."
    else:
        qt = rng.choice(QUESTION_TYPES)
        a, b, c, d = rng.sample(cats, 4)
        fields = dict(category=a, a=a, b=b, choices=f"{b}, {c}, {d}", position=a, facing=b, query=c, start=a,
                      goal=c, steps="1. Go forward until the table. 2. [please fill in] 3. Go forward until the bed.",
                      categories=f"{a}, {b}, {c}, {d}")  # fmt: skip
        question = VSI_TEMPLATES[qt].format(**fields)
        if qt in NUMERICAL_QUESTION_TYPES:
            options = None
            body = format_number(rng.choice((rng.randint(1, 6), rng.uniform(0.1, 40), rng.randint(20, 250))))
        else:
            options = format_options([rng.choice((b, c, d, "left", "right", "back", "turn left")) for _ in range(4)])
            body = rng.choice(OPTION_LETTERS)
        prompt = full_prompt(vsi_prompt(question, options), mode)
        think = f"The {a} is at ({rng.uniform(0, 6):.2f}, {rng.uniform(0, 6):.2f}) and the {b} is {rng.uniform(0, 5):.2f} m away."
    return prompt + "\n" + format_answer(body, mode, think)


def tokenizer_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Representative prompt + answer texts of every task, for training a tiny model's BPE tokenizer.

    Cheap (no rendering): random categories, colours, boxes and numbers in the exact templates.

    Example:
        >>> texts = tokenizer_corpus(20, seed=1)
        >>> len(texts), any('"bbox_3d"' in t for t in texts)
        (20, True)
    """
    rng = random.Random(seed)
    return [_corpus_item(rng) for _ in range(n)]
