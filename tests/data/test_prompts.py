from lit3drft.data import CATEGORIES, tokenizer_corpus
from lit3drft.data.prompts import COLORS, DETECTION_PROMPT, QUESTION_TYPES, VSI_TEMPLATES, format_answer


def test_categories_have_priors_and_colours():
    assert len(CATEGORIES) >= 10
    for c in CATEGORIES.values():
        assert len(c.size) == 3 and all(0.1 < s < 2.5 for s in c.size)
        assert c.colors and all(col in COLORS for col in c.colors)


def test_detection_prompt_is_vgllm_exact():
    assert DETECTION_PROMPT.startswith(
        "Detect the 3D bounding boxes in the camera coordinate system of the first frame."
    )
    assert DETECTION_PROMPT.endswith("[x_center, y_center, z_center, x_size, y_size, z_size, yaw, roll, pitch].")


def test_tokenizer_corpus_covers_every_task_and_is_deterministic():
    texts = tokenizer_corpus(400, seed=3)
    assert texts == tokenizer_corpus(400, seed=3) and texts != tokenizer_corpus(400, seed=4)
    joined = "\n".join(texts)
    for needle in ('"bbox_3d"', '"frame"', "Frame-0: ", "<think>", "<answer>", "Options:\nA. "):
        assert needle in joined
    assert set(QUESTION_TYPES) == set(VSI_TEMPLATES)
    assert format_answer("B", "ta", "x") == "<think>x</think><answer>B</answer>"
