"""Runs kernels/*.py under Triton's interpreter (TRITON_INTERPRET=1) on torch CPU tensors, with
fixes for Triton 3.6 that the kernels' checks need:

- a loop bound read from memory (range(start, end)) is a one-element array, which numpy >= 2.4
  no longer converts to an index;
- tl.dot on bf16 multiplies the raw 16-bit codes as integers; here it multiplies their f32
  values, as the tensor cores do (f32 products, f32 sums);
- f32 to bf16 conversion truncates; here it rounds to nearest even, as the GPU does;
- f32 to e4m3 rounds a tie up and drops the carry into the exponent (127.8 becomes 64); here it
  rounds to nearest even, saturating at 448, as the GPU does.

Import this module before triton.
"""
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402

_patch_lang_tensor = interpreter._patch_lang_tensor


def _patch_lang_tensor_with_index(tensor, scope):
    _patch_lang_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


interpreter._patch_lang_tensor = _patch_lang_tensor_with_index

_convert_float = interpreter._convert_float


def _convert_float_rounding_to_nearest_even(data, input_dtype, output_dtype, rounding_mode):
    if input_dtype == tl.float32 and output_dtype == tl.float8e4nv:
        f = torch.from_numpy(np.ascontiguousarray(data).view(np.float32).copy())
        return f.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    if input_dtype != tl.float32 or output_dtype != tl.bfloat16:
        return _convert_float(data, input_dtype, output_dtype, rounding_mode)
    bits = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint32).reshape(data.shape)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)


interpreter._convert_float = _convert_float_rounding_to_nearest_even

_create_dot = interpreter.InterpreterBuilder.create_dot


def _as_f32(x):
    if x.dtype.scalar != tl.bfloat16:
        return x
    data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
    return interpreter.TensorHandle(data, tl.float32)


def _create_dot_bf16_as_f32(self, a, b, d, input_precision, max_num_imprecise_acc):
    return _create_dot(self, _as_f32(a), _as_f32(b), d, input_precision, max_num_imprecise_acc)


interpreter.InterpreterBuilder.create_dot = _create_dot_bf16_as_f32
