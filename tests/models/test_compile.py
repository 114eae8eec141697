"""torch.compile of whole models: one graph (no break) with the eager loss and gradients.

On CUDA the Triton feedback solve enters the graph as two custom ops (sessa.ops.feedback.triton_ops, tested
against the eager op in tests/ops/test_feedback_triton.py); on CPU the reference solve is traced. The
"aot_eager" backend traces forward and backward as inductor would, without generating code.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.common import tiny_model


@pytest.mark.parametrize("mixer", ["sessa", "attention"])
def test_compiled_model_has_one_graph_and_the_eager_gradients(mixer: str) -> None:
    model = tiny_model(mixer).train()
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    eager = model(ids, labels=ids).loss
    eager.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(ids, labels=ids).loss
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    assert len(want) > 10
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-6,
                                   msg=name)
