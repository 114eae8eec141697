"""SessaLayer against an independent float64 implementation written as plain loops over t."""

import math

import pytest
import torch

import sessa
from sessa.layer import SessaLayer
from sessa.mixer import SessaMixer


def loop_layer(p: dict[str, torch.Tensor], x: torch.Tensor, H: int, Hkv: int, rope: bool, gmax: float):
    """DESIGN §1-2 written independently: per position, per head, no masks, no batched solves."""
    B, T, D = x.shape
    hd = D // H
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    xn = (x - mu) / torch.sqrt(var + 1e-5) * p["ln.weight"] + p["ln.bias"]
    h = xn @ p["W_in.weight"].T + p["W_in.bias"]
    a, g = h[..., :D], h[..., D:]
    a = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
    lin = lambda name, z: z @ p[f"mixer.{name}.weight"].T + p.get(f"mixer.{name}.bias", 0)
    q, k, v = lin("q_proj", a), lin("k_proj", a), lin("v_proj", a)
    fb = lin("proj_fb", a)
    qb, kb = fb[..., :D], fb[..., D:]
    gam = gmax * torch.tanh(p["mixer.gamma_bias"] + a @ p["mixer.gamma_ctx.weight"].T)

    def rot(vec, pos):  # vec: (hd,)
        out = vec.clone()
        for i in range(hd // 2):
            ang = pos * 10000.0 ** (-2 * i / hd)
            c, s = math.cos(ang), math.sin(ang)
            out[2 * i] = vec[2 * i] * c - vec[2 * i + 1] * s
            out[2 * i + 1] = vec[2 * i] * s + vec[2 * i + 1] * c
        return out

    f = torch.zeros(B, T, D, dtype=x.dtype)
    for b in range(B):
        for head in range(H):
            kvh = head // (H // Hkv)
            qs = [q[b, t, head * hd : (head + 1) * hd] for t in range(T)]
            ks = [k[b, t, kvh * hd : (kvh + 1) * hd] for t in range(T)]
            if rope:
                qs, ks = [rot(z, t) for t, z in enumerate(qs)], [rot(z, t) for t, z in enumerate(ks)]
            for t in range(T):
                w = torch.softmax(torch.stack([qs[t] @ ks[j] for j in range(t + 1)]) / math.sqrt(hd), 0)
                f[b, t, head * hd : (head + 1) * hd] = sum(
                    w[j] * v[b, j, kvh * hd : (kvh + 1) * hd] for j in range(t + 1)
                )
    if H > 1:
        f = f @ p["mixer.out_proj.weight"].T
    rows = []
    for t in range(T):
        if t == 0:
            rows.append(f[:, 0])
            continue
        w = torch.softmax(torch.einsum("bd,bjd->bj", qb[:, t], kb[:, :t]) / math.sqrt(D), -1)
        rows.append(f[:, t] + gam[:, t] * torch.einsum("bj,bjd->bd", w, torch.stack(rows, 1)))
    s = torch.stack(rows, 1)
    return x + (s * g) @ p["W_out.weight"].T + p["W_out.bias"]


def randomize(layer: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in layer.parameters():
            prm.copy_(0.5 * torch.randn(prm.shape, generator=gen, dtype=prm.dtype))


CONFIGS = [
    dict(D=16, n_heads=4, n_kv_heads=2),  # GQA
    dict(D=8, n_heads=1),  # H = 1: out_proj is the identity
    dict(D=12, n_heads=2, use_forward_rope=False),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_layer_matches_loop_implementation_forward_and_grads(cfg):
    torch.manual_seed(0)
    layer = SessaLayer(**cfg, gamma_max=0.9).double()
    randomize(layer)
    x = torch.randn(2, 9, cfg["D"], dtype=torch.float64)
    params = dict(layer.named_parameters())
    y = layer(x)
    y_ref = loop_layer(
        params,
        x,
        cfg["n_heads"],
        cfg.get("n_kv_heads") or cfg["n_heads"],
        cfg.get("use_forward_rope", True),
        0.9,
    )
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=0)
    w = torch.randn_like(y)
    names = list(params)
    g = torch.autograd.grad((y * w).sum(), [params[n] for n in names])
    g_ref = torch.autograd.grad((y_ref * w).sum(), [params[n] for n in names])
    for name, a, b in zip(names, g, g_ref, strict=False):
        assert torch.allclose(a, b, atol=1e-9, rtol=0), name
    if cfg["n_heads"] == 1:
        assert isinstance(layer.mixer.out_proj, torch.nn.Identity)


@pytest.mark.parametrize("fb_backend", ["chunked", "reference"])
def test_backends_agree(fb_backend):
    torch.manual_seed(1)
    layer = SessaLayer(32, n_heads=4, feedback_backend=fb_backend, chunk_size=8).double()
    randomize(layer, 1)
    ref = SessaLayer(32, n_heads=4, feedback_backend="reference", attention_backend="reference").double()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    assert torch.allclose(layer(x), ref(x), atol=1e-11)


def make_layer(seed=0, **kw):
    torch.manual_seed(seed)
    layer = SessaLayer(16, n_heads=4, n_kv_heads=2, **kw).double()
    randomize(layer, seed)
    with torch.no_grad():
        layer.mixer.gamma_bias.fill_(0.5)
    return layer


def test_decode_token_by_token_equals_parallel():
    layer, x = make_layer(), torch.randn(3, 17, 16, dtype=torch.float64)
    y = layer(x)
    cache = layer.init_cache(3, max_len=17)
    outs = []
    for t in range(17):
        y_t, cache = layer.decode_step(x[:, t], cache)
        assert y_t.shape == (3, 16)
        outs.append(y_t)
    assert torch.allclose(torch.stack(outs, 1), y, atol=1e-11)
    y_t3, _ = layer.decode_step(x[:, :1], layer.init_cache(3, max_len=4))
    assert y_t3.shape == (3, 1, 16) and torch.allclose(y_t3[:, 0], y[:, 0], atol=1e-12)


def test_chunked_prefill_then_decode_and_multi_token_steps():
    layer, x = make_layer(2, max_len=32), torch.randn(2, 23, 16, dtype=torch.float64)
    y = layer(x)
    cache = layer.init_cache(2)  # max_len from the constructor
    parts = []
    for a, b in [(0, 5), (5, 6), (6, 14)]:
        out, cache = layer.prefill(x[:, a:b], cache)
        parts.append(out)
    y_multi, cache = layer.decode_step(x[:, 14:18], cache)  # a multi-token step
    parts.append(y_multi)
    for t in range(18, 23):
        out, cache = layer.decode_step(x[:, t : t + 1], cache)
        parts.append(out)
    assert cache["t"] == 23
    assert torch.allclose(torch.cat(parts, 1), y, atol=1e-11)


def test_mixer_original_api_prefill_decode():
    torch.manual_seed(0)
    mixer = SessaMixer(16, n_heads=2, max_len=12).double()
    a = torch.randn(2, 12, 16, dtype=torch.float64)
    s = mixer(a)
    cache = mixer.prefill(a[:, :7], mixer.init_cache(2))
    assert torch.allclose(cache["s"][:, :7], s[:, :7], atol=1e-12)
    s_t, cache = mixer.decode_step(a[:, 7], cache)
    assert s_t.shape == (2, 16) and torch.allclose(s_t, s[:, 7], atol=1e-12)






@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gamma_near_gamma_max_finite_at_T4096(sign):
    torch.manual_seed(0)
    layer = SessaLayer(16, n_heads=2, gamma_max=0.999)
    with torch.no_grad():
        layer.mixer.gamma_bias.fill_(sign * 20.0)  # tanh -> +-1, gamma -> +-gamma_max
    x = torch.randn(1, 4096, 16, requires_grad=True)
    y = layer(x)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(prm.grad).all() for prm in layer.parameters())


def test_rope_angles_in_float32_for_bf16():
    torch.manual_seed(0)
    layer = SessaLayer(32, n_heads=2)
    q32, k32, _ = layer.mixer.qkv(torch.randn(1, 4, 32), 5000)
    layer_bf = SessaLayer(32, n_heads=2)
    layer_bf.load_state_dict(layer.state_dict())
    layer_bf = layer_bf.bfloat16()
    torch.manual_seed(0)
    a = torch.randn(1, 4, 32)
    q32, _, _ = layer.mixer.qkv(a, 5000)
    qbf, _, _ = layer_bf.mixer.qkv(a.bfloat16(), 5000)
    # bf16 angles at position 5000 would be off by up to 16 rad; float32 angles keep bf16-level error only.
    assert (qbf.float() - q32).abs().max() < 0.1 * q32.abs().max()


def test_original_checkpoint_with_legacy_buffers_loads():
    layer = SessaLayer(16, n_heads=2, max_len=8)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["mixer.rope_inv_freq"] = torch.ones(4)
    state["mixer.causal_mask_f_full"] = torch.ones(8, 8, dtype=torch.bool).triu(1)
    state["mixer.causal_mask_fb_full"] = torch.ones(8, 8, dtype=torch.bool).triu(0)
    fresh = SessaLayer(16, n_heads=2, max_len=8)
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(1, 5, 16)
    assert torch.equal(fresh(x), layer(x))
    expected = {
        "ln.weight",
        "ln.bias",
        "W_in.weight",
        "W_in.bias",
        "W_out.weight",
        "W_out.bias",
        "mixer.q_proj.weight",
        "mixer.q_proj.bias",
        "mixer.k_proj.weight",
        "mixer.k_proj.bias",
        "mixer.v_proj.weight",
        "mixer.v_proj.bias",
        "mixer.proj_fb.weight",
        "mixer.proj_fb.bias",
        "mixer.out_proj.weight",
        "mixer.gamma_bias",
        "mixer.gamma_ctx.weight",
    }
    assert set(layer.state_dict()) == expected
    assert layer.mixer.gamma_bias.item() == 1.0


def test_import_paths():
    assert sessa.SessaLayer is SessaLayer and sessa.SessaMixer is SessaMixer


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(D=16, gamma_max=1.0), "gamma_max"),
        (dict(D=16, gamma_max=0.0), "gamma_max"),
        (dict(D=15, n_heads=2), "divisible by n_heads"),
        (dict(D=16, n_heads=4, n_kv_heads=3), "n_kv_heads"),
        (dict(D=16, n_heads=2, n_kv_heads=4), "n_kv_heads"),
        (dict(D=6, n_heads=2), "even head dim"),
        (dict(D=16, feedback_backend="cuda"), "feedback_backend"),
    ],
)
def test_invalid_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SessaLayer(**kwargs)


def test_invalid_inputs_and_cache_errors():
    layer = make_layer()
    with pytest.raises(ValueError, match="last dim"):
        layer(torch.randn(2, 5, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(5, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len"):
        layer.init_cache(2)
    cache = layer.init_cache(2, max_len=4)
    layer.prefill(torch.randn(2, 4, 16, dtype=torch.float64), cache)
    with pytest.raises(ValueError, match="cache is full"):
        layer.decode_step(torch.randn(2, 16, dtype=torch.float64), cache)
    with pytest.raises(ValueError, match="batch"):
        layer.decode_step(torch.randn(3, 16, dtype=torch.float64), layer.init_cache(2, max_len=4))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(torch.randn(2, 5, 16, dtype=torch.float64), attention_mask=torch.ones(2, 4))
