"""Can the tiny LM learn to copy a referring expression at all? (issue 14 diagnostic)

``python dev/copy_probe.py MODEL_DIR [--steps N] [--visual K] [--lr LR]``: trains the language model of ``MODEL_DIR``
(an HF Qwen2.5-VL directory) on text-only sequences "grounding question with a random expression -> think that
copies it", and prints the loss on the expression's copied tokens every 25 steps (chance ~ ln of the choices).
``--visual K`` puts K fake visual embeddings (norm matched to the base's visual tokens) before the text, to see
whether a long high-norm visual prefix is what stops copying.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from lit3drft.data import prompts as P


def expression(rng: random.Random) -> str:
    cats = list(P.CATEGORIES)
    t, a = rng.sample(cats, 2)
    tc, ac = rng.choice(P.CATEGORIES[t].colors), rng.choice(P.CATEGORIES[a].colors)
    return f"the {tc} {t} {rng.choice(['closest to', 'farthest from'])} the {ac} {a}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--visual", type=int, default=0)
    ap.add_argument("--visual-norm", type=float, default=100.0)
    ap.add_argument("--blind", action="store_true")
    ap.add_argument("--induction", type=int, default=0, help="steps of repeated-word warm-up first")
    ap.add_argument("--save", default="", help="save the model here after training")
    a = ap.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32)
    lm = model.model.language_model
    emb = lm.get_input_embeddings()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    vis = torch.randn(64, a.visual, emb.embedding_dim)  # a bank of fixed "frames"
    vis = vis / vis.norm(dim=-1, keepdim=True) * a.visual_norm
    t0 = time.time()
    words = sorted({w for k in P.CATEGORIES for w in (k, *P.CATEGORIES[k].colors)} | set(P.GROUNDING_PROMPT.split()))
    for step in range(a.induction):  # random word lists said twice, the repeat supervised: an induction warm-up
        ids, masks = [], []
        for _ in range(4 * a.batch):
            seq = tok(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))), add_special_tokens=False)
            ids.append(seq["input_ids"] * 2)
            masks.append([0] * len(seq["input_ids"]) + [1] * len(seq["input_ids"]))
        n = max(map(len, ids))
        x = torch.tensor([i + [0] * (n - len(i)) for i in ids])
        m = torch.tensor([k + [0] * (n - len(k)) for k in masks], dtype=torch.bool)
        att = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
        pos = (att.cumsum(1) - 1).clamp(min=0)
        out = lm(inputs_embeds=emb(x), attention_mask=att, position_ids=pos[None].expand(3, -1, -1))
        logits = model.lm_head(out.last_hidden_state)[:, :-1]
        labels = torch.where(m, x, -100)[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        if step % 50 == 0:
            print(
                f"induction {step:4d}  repeat CE {loss.item():.3f} nats/token  ({time.time() - t0:.0f} s)", flush=True
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
    for step in range(a.steps + 1):
        ids, masks = [], []
        for _ in range(a.batch):
            d = expression(rng)
            prompt = P.full_prompt(P.grounding_question(d), "ta") + "\n"
            if a.blind:  # the control: the expression is not in the prompt, only its copy is asked for
                prompt = P.full_prompt(P.grounding_question(expression(rng)), "ta") + "\n"
            p_ids = tok(prompt + "<think>", add_special_tokens=False)["input_ids"]
            e_ids = tok(f"{d[0].upper()}{d[1:]}", add_special_tokens=False)["input_ids"]
            s_ids = tok(" looks largest", add_special_tokens=False)["input_ids"]
            ids.append(p_ids + e_ids + s_ids)
            masks.append([0] * len(p_ids) + [1] * len(e_ids) + [0] * len(s_ids))
        n = max(map(len, ids))
        x = torch.tensor([i + [0] * (n - len(i)) for i in ids])
        m = torch.tensor([k + [0] * (n - len(k)) for k in masks], dtype=torch.bool)
        att = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
        e = emb(x)
        if a.visual:
            v = vis[torch.randint(0, 64, (a.batch,))]
            e = torch.cat([v, e], 1)
            att = torch.cat([torch.ones(a.batch, a.visual, dtype=att.dtype), att], 1)
            m = torch.cat([torch.zeros(a.batch, a.visual, dtype=torch.bool), m], 1)
        pos = (att.cumsum(1) - 1).clamp(min=0)
        out = lm(inputs_embeds=e, attention_mask=att, position_ids=pos[None].expand(3, -1, -1))
        logits = model.lm_head(out.last_hidden_state)[:, :-1]
        labels = torch.full(m.shape, -100, dtype=torch.long)
        labels[:, a.visual :] = torch.where(m[:, a.visual :], x, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        if step % 25 == 0:
            print(f"step {step:4d}  expression CE {loss.item():.3f} nats/token  ({time.time() - t0:.0f} s)", flush=True)
        if step == a.steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    if a.save:
        model.save_pretrained(a.save)
        tok.save_pretrained(a.save)


if __name__ == "__main__":
    main()
