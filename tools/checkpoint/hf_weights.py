"""Hugging Face tensors <-> this codebase's full tensors, by name (format-agnostic: dicts in, dicts out).

Layouts that differ (``g`` query groups, ``n = heads / g`` query heads per group, ``d`` head dim)::

    ours  decoder.layers.i.self_attention.linear_qkv.weight  [g * (n + 2) * d, h]
          = per group [q heads of the group | k | v]  (one contiguous block per group)
    HF    q_proj [g * n * d, h], k_proj [g * d, h], v_proj [g * d, h]   (Llama, Qwen2)
          c_attn.weight [h, 3 * h] = [q | k | v] transposed (GPT-2's Conv1D)

    ours  mlp.linear_fc1.weight [2 f, h] = [gate; up]      HF gate_proj, up_proj [f, h]
    ours  norms with --apply-layernorm-1p store gamma - 1   HF stores gamma

The embedding (and untied output layer) of a checkpoint has the padded vocabulary; export keeps
the first ``vocab_size`` rows, import pads with zero rows up to ``padded_vocab_size``.
"""
from __future__ import annotations

import torch

L = "decoder.layers.{i}."


def fuse_qkv(q, k, v, groups: int):
    # q: [g * n * d, ...], k, v: [g * d, ...] -> [g * (n + 2) * d, ...]
    rest = q.shape[1:]
    q = q.reshape(groups, -1, *rest)
    k, v = k.reshape(groups, -1, *rest), v.reshape(groups, -1, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def split_qkv(qkv, groups: int, heads: int):
    # qkv: [g * (n + 2) * d, ...] -> q [g * n * d, ...], k, v [g * d, ...]
    rest = qkv.shape[1:]
    n = heads // groups
    blocks = qkv.reshape(groups, n + 2, -1, *rest)
    q = blocks[:, :n].reshape(-1, *rest)
    return q, blocks[:, n].reshape(-1, *rest), blocks[:, n + 1].reshape(-1, *rest)


def _norm_out(t, args):
    return t + 1 if args.get("apply_layernorm_1p") else t


def _norm_in(t, args):
    return t - 1 if args.get("apply_layernorm_1p") else t


def _pad_rows(t, rows: int):
    if t.shape[0] > rows:
        raise ValueError(f"the Hugging Face vocabulary ({t.shape[0]} rows) is larger than the padded vocabulary "
                         f"{rows}; pass a larger --padded-vocab-size")
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])]) if t.shape[0] < rows else t


def _llama_layer_to_hf(ours, i, args, out):
    p, g, heads = L.format(i=i), args["num_query_groups"], args["num_attention_heads"]
    hp = f"model.layers.{i}."
    for kind in ("weight", "bias"):
        qkv = ours.get(p + f"self_attention.linear_qkv.{kind}")
        if qkv is not None:
            q, k, v = split_qkv(qkv, g, heads)
            out.update({hp + f"self_attn.q_proj.{kind}": q, hp + f"self_attn.k_proj.{kind}": k,
                        hp + f"self_attn.v_proj.{kind}": v})
        for ours_name, hf_name in (("self_attention.linear_proj", "self_attn.o_proj"),
                                   ("mlp.linear_fc2", "mlp.down_proj")):
            if p + f"{ours_name}.{kind}" in ours:
                out[hp + f"{hf_name}.{kind}"] = ours[p + f"{ours_name}.{kind}"]
        fc1 = ours.get(p + f"mlp.linear_fc1.{kind}")
        if fc1 is not None:
            gate, up = fc1.chunk(2, dim=0)
            out.update({hp + f"mlp.gate_proj.{kind}": gate, hp + f"mlp.up_proj.{kind}": up})
    out[hp + "input_layernorm.weight"] = _norm_out(ours[p + "input_norm.weight"], args)
    out[hp + "post_attention_layernorm.weight"] = _norm_out(ours[p + "pre_mlp_norm.weight"], args)


def _gpt2_layer_to_hf(ours, i, args, out):
    p, hp, h = L.format(i=i), f"transformer.h.{i}.", args["hidden_size"]
    heads = args["num_attention_heads"]

    def get(name, shape):
        t = ours.get(p + name)
        return t if t is not None else torch.zeros(shape)  # --disable-bias-linear: GPT-2 has zero biases

    q, k, v = split_qkv(ours[p + "self_attention.linear_qkv.weight"], heads, heads)
    out[hp + "attn.c_attn.weight"] = torch.cat([q, k, v]).t()  # Conv1D: [in, out]
    qb, kb, vb = split_qkv(get("self_attention.linear_qkv.bias", (3 * h,)), heads, heads)
    out[hp + "attn.c_attn.bias"] = torch.cat([qb, kb, vb])
    out[hp + "attn.c_proj.weight"] = ours[p + "self_attention.linear_proj.weight"].t()
    out[hp + "attn.c_proj.bias"] = get("self_attention.linear_proj.bias", (h,))
    out[hp + "mlp.c_fc.weight"] = ours[p + "mlp.linear_fc1.weight"].t()
    out[hp + "mlp.c_fc.bias"] = get("mlp.linear_fc1.bias", (ours[p + "mlp.linear_fc1.weight"].shape[0],))
    out[hp + "mlp.c_proj.weight"] = ours[p + "mlp.linear_fc2.weight"].t()
    out[hp + "mlp.c_proj.bias"] = get("mlp.linear_fc2.bias", (h,))
    for ours_norm, hf_norm in (("input_norm", "ln_1"), ("pre_mlp_norm", "ln_2")):
        out[hp + f"{hf_norm}.weight"] = _norm_out(ours[p + f"{ours_norm}.weight"], args)
        out[hp + f"{hf_norm}.bias"] = ours[p + f"{ours_norm}.bias"]


def to_hf(ours: dict, args: dict, family: str, vocab_size: int) -> dict:
    """Our full tensors -> Hugging Face's, padding rows beyond ``vocab_size`` dropped."""
    out = {}
    if family == "gpt2":
        out["transformer.wte.weight"] = ours["embedding.weight"][:vocab_size]
        out["transformer.wpe.weight"] = ours["position_embeddings.weight"]
        for i in range(args["num_layers"]):
            _gpt2_layer_to_hf(ours, i, args, out)
        out["transformer.ln_f.weight"] = _norm_out(ours["final_norm.weight"], args)
        out["transformer.ln_f.bias"] = ours["final_norm.bias"]
        if "output_layer.weight" in ours:
            out["lm_head.weight"] = ours["output_layer.weight"][:vocab_size]
    else:
        out["model.embed_tokens.weight"] = ours["embedding.weight"][:vocab_size]
        for i in range(args["num_layers"]):
            _llama_layer_to_hf(ours, i, args, out)
        out["model.norm.weight"] = _norm_out(ours["final_norm.weight"], args)
        if "output_layer.weight" in ours:
            out["lm_head.weight"] = ours["output_layer.weight"][:vocab_size]
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def from_hf(hf: dict, args: dict, family: str) -> dict:
    """Hugging Face tensors -> our full tensors (the names ``args``' model has), vocabulary padded."""
    rows = args["padded_vocab_size"]
    tied = not args.get("untie_embeddings_and_output_weights")
    out = {}

    def take(name):
        if name not in hf:
            raise ValueError(f"the Hugging Face checkpoint has no tensor {name} (is config.json its config?)")
        return hf[name].float()

    if family == "gpt2":
        out["embedding.weight"] = _pad_rows(take("transformer.wte.weight"), rows)
        out["position_embeddings.weight"] = take("transformer.wpe.weight")
        heads = args["num_attention_heads"]
        for i in range(args["num_layers"]):
            p, hp = L.format(i=i), f"transformer.h.{i}."
            q, k, v = take(hp + "attn.c_attn.weight").t().chunk(3)
            qb, kb, vb = take(hp + "attn.c_attn.bias").chunk(3)
            out[p + "self_attention.linear_qkv.weight"] = fuse_qkv(q, k, v, heads)
            out[p + "self_attention.linear_qkv.bias"] = fuse_qkv(qb, kb, vb, heads)
            out[p + "self_attention.linear_proj.weight"] = take(hp + "attn.c_proj.weight").t()
            out[p + "self_attention.linear_proj.bias"] = take(hp + "attn.c_proj.bias")
            out[p + "mlp.linear_fc1.weight"] = take(hp + "mlp.c_fc.weight").t()
            out[p + "mlp.linear_fc1.bias"] = take(hp + "mlp.c_fc.bias")
            out[p + "mlp.linear_fc2.weight"] = take(hp + "mlp.c_proj.weight").t()
            out[p + "mlp.linear_fc2.bias"] = take(hp + "mlp.c_proj.bias")
            for ours_norm, hf_norm in (("input_norm", "ln_1"), ("pre_mlp_norm", "ln_2")):
                out[p + f"{ours_norm}.weight"] = _norm_in(take(hp + f"{hf_norm}.weight"), args)
                out[p + f"{ours_norm}.bias"] = take(hp + f"{hf_norm}.bias")
        out["final_norm.weight"] = _norm_in(take("transformer.ln_f.weight"), args)
        out["final_norm.bias"] = take("transformer.ln_f.bias")
    else:
        out["embedding.weight"] = _pad_rows(take("model.embed_tokens.weight"), rows)
        g = args["num_query_groups"]
        for i in range(args["num_layers"]):
            p, hp = L.format(i=i), f"model.layers.{i}.self_attn."
            kinds = ("weight", "bias") if hp + "q_proj.bias" in hf else ("weight",)
            for kind in kinds:
                out[p + f"self_attention.linear_qkv.{kind}"] = fuse_qkv(
                    take(hp + f"q_proj.{kind}"), take(hp + f"k_proj.{kind}"), take(hp + f"v_proj.{kind}"), g)
                if hp + f"o_proj.{kind}" in hf:
                    out[p + f"self_attention.linear_proj.{kind}"] = take(hp + f"o_proj.{kind}")
                mp = f"model.layers.{i}.mlp."
                if mp + f"gate_proj.{kind}" in hf:
                    out[p + f"mlp.linear_fc1.{kind}"] = torch.cat([take(mp + f"gate_proj.{kind}"),
                                                                   take(mp + f"up_proj.{kind}")])
                    out[p + f"mlp.linear_fc2.{kind}"] = take(mp + f"down_proj.{kind}")
            lp = f"model.layers.{i}."
            out[p + "input_norm.weight"] = _norm_in(take(lp + "input_layernorm.weight"), args)
            out[p + "pre_mlp_norm.weight"] = _norm_in(take(lp + "post_attention_layernorm.weight"), args)
        out["final_norm.weight"] = _norm_in(take("model.norm.weight"), args)
    if not tied:
        head = hf.get("lm_head.weight")
        out["output_layer.weight"] = _pad_rows(head.float() if head is not None else out["embedding.weight"][
            :hf_vocab(hf, family)], rows)
    return {k: v.contiguous() for k, v in out.items()}


def hf_vocab(hf: dict, family: str) -> int:
    return hf["transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight"].shape[0]
