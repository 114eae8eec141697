"""The launches of a one-token step bound to a layer's cache (``sessa.ops.step_launches``): the same outputs
and cache writes as the generic step, kept across steps, made again when the cache grows or is reordered.

The binding takes CUDA tensors and Triton's direct launches; here it runs in a child process with
TRITON_INTERPRET=1 and its two gates (``bindable``, ``usable``) opened for CPU tensors, so every launch goes
through the kept argument lists into Triton's interpreter (this file, run as a script, prints JSON). The
direct launches themselves are checked on a GPU by ``scripts/check_decode_gpu.py``.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.helpers import run_interpreted

HAS_TRITON = importlib.util.find_spec("triton") is not None
MODELS = [
    ("sessa", {}),
    ("sessa", {"n_kv_heads": 1}),
    ("sessa", {"use_feedback": False}),
    ("sessa", {"use_forward_rope": False}),
    ("attention", {"n_kv_heads": 1}),
]


def _open_gates() -> dict[str, int]:
    """Let CPU tensors take the binding; count the bindings made and the bound steps run."""
    import sessa.ops.step_launches as sl

    counts = {"made": 0, "steps": 0}
    init, prologue = sl.StepLaunches.__init__, sl.StepLaunches.prologue

    def counted_init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        counts["made"] += 1
        init(self, *args, **kwargs)

    def counted_prologue(self, *args):  # noqa: ANN001, ANN002
        counts["steps"] += 1
        return prologue(self, *args)

    sl.bindable = lambda x: True
    sl.usable = lambda *args: True
    sl.StepLaunches.__init__, sl.StepLaunches.prologue = counted_init, counted_prologue
    return counts


def _model_cases(counts: dict[str, int]) -> dict[str, list[float]]:
    """Each tiny model decodes a left-padded batch token by token (its cache grows once), then its rows
    swapped (a reorder, as beam search does): the largest relative error of the step logits against the
    full forward, the bindings made and the bound steps run per layer."""
    from tests.helpers import rel_err
    from tests.models.common import left_pad, prompts, step_logits, tiny_model

    out = {}
    for mixer, extra in MODELS:
        model = tiny_model(mixer, **extra)
        ids, mask = left_pad(prompts((12, 9)), 0)
        n_layers = len(model.model.layers)
        counts.update(made=0, steps=0)
        errs = []
        with torch.no_grad():
            full = model(ids, attention_mask=mask).logits
            cache = model(ids[:, :5], attention_mask=mask[:, :5], use_cache=True).cache
            steps = step_logits(model, ids, mask, 5, 9, cache)
            errs += [rel_err(steps[:, i], full[:, t]) for i, t in enumerate(range(5, 9))]
            swap = torch.tensor([1, 0])
            cache.reorder_cache(swap)
            full_swapped = model(ids[swap], attention_mask=mask[swap]).logits
            steps = step_logits(model, ids[swap], mask[swap], 9, 12, cache)
            errs += [rel_err(steps[:, i], full_swapped[:, t]) for i, t in enumerate(range(9, 12))]
        out[f"{mixer}-{extra}"] = [max(errs), counts["made"] / n_layers, counts["steps"] / n_layers]
    return out


def _op_case() -> dict[str, float]:
    """A binding against the generic ops on copies of one Sessa cache (GQA, key mask, bf16): the prologue's
    q, caches and gain bit for bit (the same kernel), the attention and the feedback row to the rounding of
    the dtype (other splits of the context), s written at t and nowhere else."""
    from sessa.ops.attention import rope_tables
    from sessa.ops.step_launches import StepLaunches
    from sessa.ops.triton_decode import decode_attention_triton, feedback_decode_triton, step_prologue_triton

    gen = torch.Generator().manual_seed(3)
    dt = torch.bfloat16
    B, L, H, Hkv, hd, t = 2, 40, 4, 2, 8, 29
    D, KV = H * hd, Hkv * hd
    W = 3 * D + 2 * KV + 1
    caches = [torch.randn(B, L, Hkv, hd, generator=gen).to(dt) for _ in range(2)]
    caches += [torch.randn(B, L, D, generator=gen).to(dt) for _ in range(2)]  # k_b, s
    mask = torch.rand(B, L, generator=gen) > 0.2
    gain = (torch.tensor(0.4), 0.999)
    proj = torch.randn(B, 1, W, generator=gen).to(dt)
    f = torch.randn(B, 1, D, generator=gen).to(dt)
    rope = rope_tables(t, 1, hd, 10000.0, dt, proj.device)
    mine, ref = [c.clone() for c in caches], [c.clone() for c in caches]
    bound = StepLaunches(mine[0], mine[1], mask, H, W, True, mine[2], mine[3], gain)
    q1 = bound.prologue(proj, rope, t).clone()
    g1 = bound.gamma.clone()
    q2, g2 = step_prologue_triton(proj, ref[0], ref[1], t, H, rope, ref[2], gain)
    exact = all(torch.equal(a, b) for a, b in zip([q1, g1, *mine[:3]], [q2, g2, *ref[:3]], strict=True))
    a1 = bound.attention(torch.full((B,), t + 1, dtype=torch.int32)).clone()
    a2 = decode_attention_triton(q2, ref[0], ref[1], torch.tensor(t + 1), mask)
    s1 = bound.feedback_row(proj, f, torch.full((B,), t, dtype=torch.int32), t)
    q_b = proj[..., D + 2 * KV : 2 * D + 2 * KV]
    s2 = feedback_decode_triton(q_b, ref[2], g2, f, ref[3], torch.tensor(t), mask)
    others = torch.ones(L, dtype=torch.bool)
    others[t] = False
    untouched = torch.equal(mine[3][:, others], ref[3][:, others])
    eps = torch.finfo(dt).eps
    return {
        "prologue-bitwise": float(exact),
        "attention": (a1.double() - a2.double()).abs().max().item() / (eps * a2.double().abs().max().item()),
        "feedback": (s1.double() - s2.double()).abs().max().item() / (eps * s2.double().abs().max().item()),
        "s-written-at-t-only": float(untouched and s1.data_ptr() == mine[3][:, t].data_ptr()),
    }


def _beam_case(counts: dict[str, int]) -> dict[str, float]:
    """Beam search (3 beams, 2 returned; the cache is reordered every step) of tiny Sessa and attention
    models through bindings against the generic step (the gate closed again): the same tokens, scores to
    rounding."""
    import sessa.ops.step_launches as sl
    from tests.models.common import left_pad, prompts, tiny_model

    ids, mask = left_pad(prompts((9, 6), seed=3), 0)
    opened = sl.bindable
    out = {}
    for name in ("sessa", "attention"):
        model = tiny_model(name)
        runs = []
        for gate in (opened, lambda x: False):
            sl.bindable, counts["steps"] = gate, 0
            with torch.no_grad():
                res = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False,
                                     pad_token_id=0, num_return_sequences=2, output_scores=True,
                                     return_dict_in_generate=True)
            runs.append((res.sequences, res.sequences_scores, counts["steps"]))
        sl.bindable = opened
        (seq1, sc1, bound_steps), (seq2, sc2, generic_steps) = runs
        same = torch.equal(seq1, seq2) and bound_steps > 0 and generic_steps == 0
        out[name] = (sc1 - sc2).abs().max().item() if same else 99.0
    return out


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_bound_steps_equal_the_forward_the_generic_ops_and_beam_search_in_the_interpreter():
    result = run_interpreted(__file__)
    models, op, beams = result["models"], result["op"], result["beams"]
    assert all(diff < 1e-5 for diff in beams.values()), beams  # same tokens, scores to rounding
    assert len(models) == len(MODELS)
    for name, (err, made, steps) in models.items():
        assert err < 1e-5, (name, err)
        # one binding at the first one-token step, again when the cache grew (capacity 5 -> 10) and after the
        # reorder (new tensors); 7 one-token steps, all bound
        assert (made, steps) == (3.0, 7.0), (name, made, steps)
    assert op["prologue-bitwise"] == 1.0 and op["s-written-at-t-only"] == 1.0, op
    assert op["attention"] <= 2.0 and op["feedback"] <= 2.0, op  # within two roundings of the output


def test_the_binding_is_not_used_on_cpu_without_the_interpreter():
    from sessa.ops.step_launches import CACHE_KEY
    from tests.models.common import tiny_model

    model = tiny_model("sessa")
    with torch.no_grad():
        res = model(torch.randint(3, 200, (1, 4)), use_cache=True)
        model(torch.randint(3, 200, (1, 1)), cache=res.cache)
    assert all(CACHE_KEY not in state for state in res.cache.states)  # not even looked for on CPU


if __name__ == "__main__":
    counts = _open_gates()
    print(json.dumps({"models": _model_cases(counts), "op": _op_case(), "beams": _beam_case(counts)}))
