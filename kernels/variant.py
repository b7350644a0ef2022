"""What the ahead-of-time build compiles: one Kernel per Triton function, one Variant per compiled
specialization (constexprs, pointer dtypes, warps, pipeline depth, divisibility hints).

All variants of a kernel share one C launch signature: the non-constexpr arguments in order, with
pointers as device addresses, so the host picks a variant by its tags without changing the call.
"""
from dataclasses import dataclass, field

# Triton scalar types and the C++ type a launch wrapper passes for them. fp32 is a 4-byte float:
# the kernel reads 4 bytes, whatever a varargs-minded launcher might think.
SCALAR_C_TYPES = {"i32": "int32_t", "i64": "int64_t", "fp32": "float"}


@dataclass(frozen=True)
class Variant:
    # Unique within its kernel; also the suffix of the compiled function's C++ name.
    name: str
    # Argument name -> Triton type ("*bf16", "i32", "fp32", ...) or "constexpr".
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    # Arguments the compiler may assume are multiples of 16 (pointers: 16-byte aligned).
    # The launch wrapper checks them at run time.
    divisible_by_16: tuple = ()
    # What the host selects a variant by (small integers: block sizes, flags, dtype codes).
    tags: dict = field(default_factory=dict)

    def options(self):
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


@dataclass(frozen=True)
class Kernel:
    name: str
    fn: object  # the @triton.jit function
    variants: list
    # One line for the generated header: what the kernel computes.
    summary: str = ""
    # The oldest GPU architecture the kernel compiles for (89: FP8 needs Ada or Hopper).
    min_arch: int = 0

    def launch_args(self):
        """(name, triton type) of each run-time argument, in kernel order."""
        first = self.variants[0].signature
        return [(a, t) for a, t in first.items() if t != "constexpr"]


# Tag values for dtypes, shared with the C++ side (src/backend/cuda/kernel_tags.h).
DTYPE_CODES = {"fp32": 0, "bf16": 1, "fp16": 2, "fp8e4nv": 3}
