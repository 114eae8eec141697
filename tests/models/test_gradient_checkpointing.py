"""Activation (gradient) checkpointing through transformers' switch: the same gradients with far fewer saved
activations, for every model; evaluation, generation and resuming are unaffected."""

from __future__ import annotations

import pytest
import torch

from sessa import registry
from sessa.models import SessaConfig, SessaForCausalLM, model_config
from sessa.train.trainer import enable_activation_checkpointing, train
from tests.train.common import losses, tiny_config


def _model(name: str) -> SessaForCausalLM:
    torch.manual_seed(0)
    target = SessaConfig.from_preset("tiny", mixer="sessa", n_layers=3)
    return SessaForCausalLM(target if name == "sessa" else model_config(target, name)).double().train()


def _grads_and_saved(model: SessaForCausalLM, ids: torch.Tensor, mask: torch.Tensor) -> tuple[list, int]:
    """Parameter gradients of the LM loss, and the bytes autograd saved outside checkpointed regions."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    return [p.grad.clone() for p in model.parameters()], sum(saved.values())


@pytest.mark.parametrize("name", registry.model_names())
def test_checkpointed_gradients_equal_and_activations_are_not_kept(name):
    model = _model(name)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (2, 48), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding goes through the checkpointed blocks too
    plain, plain_bytes = _grads_and_saved(model, ids, mask)
    enable_activation_checkpointing(model)
    assert model.model.gradient_checkpointing
    checkpointed, kept_bytes = _grads_and_saved(model, ids, mask)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert kept_bytes < 0.35 * plain_bytes, (kept_bytes, plain_bytes)


def test_evaluation_and_generation_do_not_checkpoint():
    model = _model("sessa")
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want_logits = model.eval()(ids).logits
        want = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    enable_activation_checkpointing(model)
    calls = []
    model.model._gradient_checkpointing_func = lambda *a, **k: calls.append(1)  # would break a forward
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, want_logits)
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), want)
    assert calls == []


def test_trainer_option_gives_the_same_run(tmp_path):
    plain = train(tiny_config(tmp_path / "a", steps=4), quiet=True)
    checkpointed = train(tiny_config(tmp_path / "b", steps=4, gradient_checkpointing=True), quiet=True)
    torch.testing.assert_close(losses(checkpointed), losses(plain), rtol=1e-6, atol=1e-6)
    # a free field: a run may be resumed with it switched
    switched = tiny_config(tmp_path / "b", steps=6, gradient_checkpointing=False)
    resumed = train(switched, resume=True, quiet=True)
    assert len(losses(resumed)) == 6
