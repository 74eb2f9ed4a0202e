"""Writes reference.safetensors with the Python `safetensors` package, for the interop test.

Run from this folder with a Python that has torch + safetensors:  python make_fixture.py
The values are exact in their dtypes; tests/unit/io/test_safetensors.cpp repeats them.
"""
import torch
from safetensors.torch import save_file

tensors = {
    "weight.f32": torch.tensor([[1.5, -2.25, 0.0], [3.0, 1e-8, -1e30]], dtype=torch.float32),
    # 1, -2.5, the largest half, the smallest normal half, the smallest subnormal half
    "weight.f16": torch.tensor([1.0, -2.5, 65504.0, 2.0**-14, 2.0**-24], dtype=torch.float16),
    "weight.bf16": torch.tensor([[1.0, -1.5], [3.140625, -0.0078125]], dtype=torch.bfloat16),
    "ids.i64": torch.tensor([-1, 0, 2**40 + 7], dtype=torch.int64),
    "empty.f32": torch.zeros(0, 4, dtype=torch.float32),
}
save_file(tensors, "reference.safetensors", metadata={"format": "pt", "source": "make_fixture.py"})
