"""An entry point that registers a name a built-in already has, on purpose: it must be rejected."""

from converter.hookspecs import hookimpl
from converter.passes.cleanup import CleanupPass


class AnotherCleanup(CleanupPass):
    summary = "A second 'cleanup' (must be rejected as a duplicate)."


@hookimpl
def converter_register_passes(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add(AnotherCleanup)
