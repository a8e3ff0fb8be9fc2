"""Does a checkpoint read its prompt back with frames in the context? (issue 14 diagnostic)

``python dev/copy_frames_probe.py RUN_DIR_OR_CKPT [--n N] [key=value ...]``: the question-swap gap (answer CE under
the next sample's prompt minus under its own, nats/token) of held-out text-only copy samples
(``copy_text_sample``, stream ``pretrain.seed + 1``) asked (a) alone, (b) after a held-out clip's frames, and (c)
of the held-out grounding clips, on the referring expression's copy in a ``grounding_think=description`` think
only (the tokens of the answer before " looks largest"), and (d) that wording and think with no frames (the copy
samples' expressions asked as grounding questions). A policy that copies in (a) but not in (b) is one whose
copying the visual tokens break.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from lit3drft.algorithms.sft import answer_only_cross_entropy
from lit3drft.data import prompts as P
from lit3drft.data.perception import PerceptionDataset, copy_text_sample, grounding_sample
from lit3drft.evaluate import resolve_target
from lit3drft.fit import load_trainable
from lit3drft.models import build_policy


def _ce(policy, samples: list, prefix_only: str | None = None) -> float:
    """Answer CE (nats/token) of ``samples``; ``prefix_only``: only the answer tokens before that text's first
    token (the copied expression of a description think)."""
    b = policy.to_device(policy.collate(samples, with_answer=True))
    labels = b["labels"].clone()
    if prefix_only is not None:
        stop = policy.tokenizer(prefix_only, add_special_tokens=False)["input_ids"][0]
        for row in labels:
            idx = (row != -100).nonzero().flatten()
            hit = [j for j in idx.tolist() if int(row[j]) == stop]
            if hit:
                row[hit[0] :] = -100
            row[idx[:2]] = -100  # "<think>" tags: not a copy
    with torch.no_grad():
        return answer_only_cross_entropy(policy(b).logits, labels).item()


def gap(policy, samples: list, prefix_only: str | None = None) -> tuple[float, float]:
    swapped = [replace(s, prompt=samples[(i + 1) % len(samples)].prompt) for i, s in enumerate(samples)]
    own = _ce(policy, samples, prefix_only)
    return own, _ce(policy, swapped, prefix_only) - own


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg, weights, _ = resolve_target(Path(args.target), None, args.overrides)
    policy = build_policy(cfg.model)
    if weights is not None:
        load_trainable(policy, weights)
    policy.eval()
    pc = cfg.pretrain
    clips = [s for s, _ in (PerceptionDataset(pc, cfg.data.synth, pc.seed + 1, args.n, training=False)[i]
                            for i in range(args.n))]  # fmt: skip
    copies = [copy_text_sample(pc.seed + 1, i) for i in range(args.n)]
    rows = {}
    for name, samples in (
        ("copy, text only", copies),
        (
            "copy, after a clip's frames",
            [replace(c, prompt=t.prompt, answer=t.answer, task="copy", target=t.target) for c, t in zip(clips, copies)],
        ),  # fmt: skip
    ):
        rows[name] = [gap(policy, samples[b : b + 8]) for b in range(0, len(samples), 8)]
    asked = [grounding_sample(s, "ta") for s in clips if s.meta.get("grounding")]
    # the grounding question's wording and think, text only: a copy sample's expression asked as a grounding question
    worded = [replace(c, prompt=P.full_prompt(P.grounding_question(c.target["text"]), "ta"),
                      answer=P.format_answer("", "ta", f"{c.target['text']} looks largest in Frame-0."))
              for c in copies if c.target["text"].startswith("The ")]  # fmt: skip
    if len(worded) >= 2:
        rows["grounding wording, text only"] = [gap(policy, worded[b : b + 8], " looks")
                                                for b in range(0, len(worded) - 1, 8)]  # fmt: skip
    if len(asked) >= 2 and pc.grounding_think == "description":
        rows["grounding think's expression copy"] = [gap(policy, asked[b : b + 8], " looks")
                                                     for b in range(0, len(asked) - 1, 8)]  # fmt: skip
    for name, r in rows.items():
        own = sum(o for o, _ in r) / len(r)
        g = sum(x for _, x in r) / len(r)
        print(f"{name:40s} answer CE {own:.3f}  question-swap gap {g:+.3f} nats/token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
