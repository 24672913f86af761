"""Run this package's kernels on CPU tensors under the Triton interpreter (tests, gpu_check --smoke).

Triton picks interpreter or compiler when a function is decorated, reading TRITON_INTERPRET then. Our
kernels are decorated when their modules are first imported, so setting the variable before that is
enough for them; but triton's own helpers (tl.max, tl.sum, tl.zeros, ...) were decorated when triton
was first imported, which transformers may already have done. Those are then routed through the
interpreter as device functions, as they would have been had the variable been set from the start.
"""
import os
import sys

KERNEL_MODULES = ("activation", "decode_attention", "extend_attention", "paged_softmax", "rms_norm", "rotary", "sample", "store_kv")


def enable_interpreter() -> None:
    compiled = [m for m in KERNEL_MODULES if f"kernels.{m}" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"]
    if compiled:
        raise RuntimeError(f"kernels {compiled} were imported for the compiler; enable the interpreter before importing them")
    routed = "triton" in sys.modules  # its helpers were decorated for the compiler
    os.environ["TRITON_INTERPRET"] = "1"
    _patch_language_once()
    if not routed:
        return
    from triton.runtime import jit
    from triton.runtime.interpreter import InterpretedFunction

    if getattr(jit.JITFunction, "_routed_to_interpreter", False):
        return
    interpreted: dict[int, InterpretedFunction] = {}  # by id: hashing a JITFunction parses its source

    def call_as_device_function(self, *args, **kwargs):
        if id(self) not in interpreted:
            interpreted[id(self)] = InterpretedFunction(self.fn)
        return interpreted[id(self)](*args, **kwargs)

    jit.JITFunction.__call__ = call_as_device_function
    jit.JITFunction._routed_to_interpreter = True


def _patch_language_once() -> None:
    """The interpreter patches triton.language for every call of a device function (our helpers, tl.max,
    ...) by walking the members of the modules it sees: a quarter of an interpreted engine step. The
    patches a device call makes stay, and a launch's stay until it ends, so the walk is skipped when every
    such module the function sees is patched already (the same patches would be made again)."""
    import triton.language as tl
    from triton.runtime import interpreter

    patch = interpreter._patch_lang
    if getattr(patch, "_skips_patched", False):
        return

    def patch_unless_patched(fn):
        langs = [value for value in fn.__globals__.values() if value is tl or value is tl.core]
        if langs and not any(tl.core.is_builtin(getattr(lang, "where", None)) for lang in langs):
            return interpreter._LangPatchScope()  # nothing to restore: those patches are not this call's
        return patch(fn)

    patch_unless_patched._skips_patched = True
    interpreter._patch_lang = patch_unless_patched
