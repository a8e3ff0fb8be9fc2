"""Where does the grounding box get lost on its way to the answer? (issue 14)

``python dev/box_readout_probe.py RUN_OR_CKPT [--n N] [key=value ...]``: held-out pretraining clips (seed + 1) asked
the grounding question, teacher-forced with the target answer; per clip, from every layer's hidden states:

- ``object@L``: the mean hidden state of the visual tokens the referred object owns in the answered frame, at the
  input of layer L (what a head of layer L could read there);
- ``first@L``: the hidden state that predicts the answer box's first digit (nothing of the box written yet; the
  think before it does state the depth), at the input of layer L (``L = n_layers``: the last hidden state, what the
  LM head reads);

- ``valueK@L``: the mean over the object's tokens of what key/value head K of layer L passes on (its value
  projection of the layer's normalised input): whether an attention head that looks there *can* carry the box;

and fits ridge regressions (closed form, on half the clips, scored on the other half) from each to the target box
(centre and size in the answered frame's camera, 6 numbers), reporting R² per number (x, y, z, then the sizes) and
representation; ``category`` (a
one-hot of the referred object's category) is the reference a template per category reaches. High ``object`` and
low ``first``: the box is in the tokens but does not reach the answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lit3drft.data.perception import PerceptionDataset, grounding_sample
from lit3drft.evaluate import resolve_target
from lit3drft.fit import load_trainable
from lit3drft.models import build_policy
from lit3drft.models.decode import language_model


def ridge_r2(x: np.ndarray, y: np.ndarray, lam: float) -> list[float]:
    """R² per output on the second half of the rows of a ridge fit on the first half (standardised x)."""
    n = len(x) // 2
    mu, sd = x[:n].mean(0), x[:n].std(0) + 1e-6
    xs = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
    a, b = xs[:n], xs[n:]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y[:n])
    pred, truth = b @ w, y[n:]
    ss_res = ((pred - truth) ** 2).sum(0)
    ss_tot = ((truth - y[:n].mean(0)) ** 2).sum(0)
    return [round(float(v), 3) for v in 1 - ss_res / ss_tot]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--n", type=int, default=400, help="held-out clips to draw (those with a describable object ask)")
    ap.add_argument("--lam", type=float, default=30.0, help="ridge penalty (on standardised features)")
    ap.add_argument(
        "--head",
        default="",
        help="LAYER:HEAD: also that attention head's output at the first-number "
        "state (its value mix, through its slice of o_proj) and its mass on the object's tokens there",
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    extra = ["model.attn_implementation=eager"] if args.head else []  # attention weights need eager
    cfg, weights, _ = resolve_target(Path(args.target), None, [*args.overrides, *extra])
    policy = build_policy(cfg.model)
    if weights is not None:
        load_trainable(policy, weights)
    policy.eval()
    pc = cfg.pretrain
    data = PerceptionDataset(pc, cfg.data.synth, pc.seed + 1, args.n, training=False)
    tok = policy.tokenizer
    digit = torch.tensor([any(c.isdigit() for c in tok.decode([i])) for i in range(len(tok))])
    image_id = policy.hf_model.config.image_token_id
    decoder = language_model(policy.hf_model).layers
    layers = [d.self_attn for d in decoder]
    attn_norm = [d.input_layernorm for d in decoder]
    feats: dict[str, list[np.ndarray]] = {}
    boxes, cats, masses = [], [], []
    for i in range(args.n):
        sample, dense = data[i]
        g = sample.meta.get("grounding")
        if not g:
            continue
        flat = grounding_sample(sample, pc.grounding_mode)
        b = policy.collate([flat], with_answer=True)
        with torch.no_grad():
            pos, _ = policy.positions(b["input_ids"], b["mm_token_type_ids"], b["attention_mask"], b)
            out = policy.hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=pos,
                                 use_cache=False, output_hidden_states=True, output_attentions=bool(args.head),
                                 **policy.visual_kwargs(b))  # fmt: skip
            att, hs = out.attentions, out.hidden_states
        img = torch.nonzero(b["input_ids"][0] == image_id).flatten()
        per_frame = len(img) // len(flat.frames)
        owner = dense["owner"]
        own = [
            int(img[t]) for t in range(len(img)) if owner[t] == int(g["object"]) and t // per_frame == int(g["frame"])
        ]
        labels = b["labels"][0]
        text = [tok.decode([int(t)]) if t != -100 else "" for t in labels.tolist()]
        start = "".join(text).find('"bbox_3d"')  # the answer's box, not the think's depth
        ends = np.cumsum([len(t) for t in text])
        writes = [j - 1 for j in range(len(labels)) if labels[j] != -100 and digit[labels[j]] and ends[j] > start]
        if not own or not writes:
            continue
        for layer, attn in enumerate(layers):  # what each key/value head of each layer reads off the object's tokens
            hd = attn.head_dim
            v = attn.v_proj(attn_norm[layer](hs[layer][0, own])).detach()  # (tokens, kv heads * hd)
            for kv in range(v.shape[-1] // hd):
                feats.setdefault(f"value{kv}@{layer}", []).append(v[:, kv * hd : (kv + 1) * hd].mean(0).float().numpy())
        if args.head:
            L, H = (int(x) for x in args.head.split(":"))
            attn, hd = layers[L], layers[L].head_dim
            kv = H // attn.num_key_value_groups
            v = attn.v_proj(attn_norm[L](hs[L][0])).detach()[:, kv * hd : (kv + 1) * hd]  # (L, hd)
            w = att[L][0, H, writes[0]]  # (L,) its attention from the first-number state
            mix = w @ v
            feats.setdefault("head_mix", []).append(mix.float().numpy())
            feats.setdefault("head_out", []).append(
                (attn.o_proj.weight[:, H * hd : (H + 1) * hd] @ mix).detach().float().numpy()
            )
            masses.append(float(w[own].sum()))
        for layer, h in enumerate(hs):
            feats.setdefault(f"object@{layer}", []).append(h[0, own].mean(0).float().numpy())
            feats.setdefault(f"first@{layer}", []).append(h[0, writes[0]].float().numpy())
        boxes.append(np.array(g["bbox_3d"][:6], dtype=np.float64))
        cats.append(sample.meta["grounding"]["description"].split()[2])  # "the <colour> <category> ..."
    y = np.stack(boxes)
    names = sorted(set(cats))
    onehot = np.array([[c == n for n in names] for c in cats], dtype=np.float64)
    out = {"clips": len(y), "category": ridge_r2(onehot, y, 1.0)}
    if masses:
        out["head_mass_first"] = round(float(np.mean(masses)), 3)
    for k, v in feats.items():
        out[k] = ridge_r2(np.stack(v).astype(np.float64), y, args.lam)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
