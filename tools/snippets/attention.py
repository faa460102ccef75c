# Attention and a pre-LN Transformer encoder block, from scratch. This cell is the same
# in every chapter that uses it (a test checks it against tools/snippets/attention.py).
import math

import torch
import torch.nn.functional as F
from torch import nn


def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0):
    """softmax(q k^T / sqrt(D) + mask) v over the last two dimensions.

    q (..., S, D), k (..., T, D), v (..., T, Dv) -> output (..., S, Dv) and the
    attention weights (..., S, T). mask broadcasts to (..., S, T): boolean with
    True = attend (the convention of F.scaled_dot_product_attention), or float, added
    to the scores. A query that may attend to no key gets zero weights and a zero
    output, not NaN.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., S, T)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    # Rows with every score at -inf would be softmax(-inf, ..., -inf) = 0/0 = NaN.
    dead = scores.amax(dim=-1, keepdim=True) == float("-inf")
    weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1)
    weights = weights.masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the parameters and calling convention of
    nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True), so that
    load_state_dict works in both directions: in_proj_weight (3E, E) stacks W_q, W_k
    and W_v.
    Masks follow nn.MultiheadAttention, the opposite of scaled_dot_product_attention:
    True in key_padding_mask (N, T) or in a boolean attn_mask (S, T) or (N * H, S, T)
    means do NOT attend; a float attn_mask is added to the scores."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True):
        super().__init__()
        assert embed_dim % num_heads == 0, "embed_dim must be divisible by num_heads"
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)  # PyTorch's initialization
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def split_heads(self, x):  # (N, L, E) -> (N, H, L, D), a view: nothing is copied
        N, L, _ = x.shape
        return x.view(N, L, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        """query (N, S, E), key and value (N, T, E) -> output (N, S, E) and the weights
        (N, S, T) averaged over heads, or (N, H, S, T), or None if not need_weights.
        is_causal=True applies the causal mask itself (nn.MultiheadAttention only takes
        it as a hint that attn_mask is causal)."""
        N, S, E = query.shape
        T = key.shape[1]
        b = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        w = self.in_proj_weight.chunk(3)  # W_q, W_k, W_v, each (E, E)
        q = self.split_heads(F.linear(query, w[0], b[0]))  # (N, H, S, D)
        k = self.split_heads(F.linear(key, w[1], b[1]))  # (N, H, T, D)
        v = self.split_heads(F.linear(value, w[2], b[2]))  # (N, H, T, D)
        mask = torch.zeros(N, 1, S, T, dtype=q.dtype, device=q.device)  # additive
        if is_causal:
            causal = torch.ones(S, T, dtype=torch.bool, device=q.device).tril()
            mask = mask.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (N * H, S, T), batch-major as in PyTorch
                attn_mask = attn_mask.view(N, self.num_heads, S, T)
            if attn_mask.dtype == torch.bool:
                mask = mask.masked_fill(attn_mask, float("-inf"))
            else:
                mask = mask + attn_mask
        if key_padding_mask is not None:  # (N, T), True = padding
            mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        p = self.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=p)
        # (N, H, S, D) -> (N, S, H, D) -> (N, S, E): the transpose leaves the memory
        # in head order, so merging needs reshape (a copy), not view.
        out = self.out_proj(out.transpose(1, 2).reshape(N, S, E))
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


class EncoderBlock(nn.Module):
    """Pre-LN Transformer encoder block: x + attn(LN(x)), then x + FFN(LN(x)).
    Parameter names match nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward,
    dropout, activation, norm_first=True, batch_first=True), so state dicts load across;
    the default activation is ReLU, as there. Masks follow nn.MultiheadAttention."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.0,
                 activation=F.relu, layer_norm_eps=1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, x, attn_mask=None, key_padding_mask=None, is_causal=False):
        """x (N, S, E) -> (N, S, E)."""
        h = self.norm1(x)
        a, _ = self.self_attn(h, h, h, key_padding_mask=key_padding_mask,
                              attn_mask=attn_mask, is_causal=is_causal)
        x = x + self.dropout(a)
        h = self.linear2(self.dropout(self.activation(self.linear1(self.norm2(x)))))
        return x + self.dropout(h)
