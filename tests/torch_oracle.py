"""Test-side name for the torch reference (kept so tests read ``torch_oracle.forward``)."""

from fedbeat.tools.torch_reference import forward, loss_fn, torch_params

__all__ = ["forward", "loss_fn", "torch_params"]
