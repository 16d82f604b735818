"""An entry point that fails to import, on purpose: the tool must list it and keep working."""

raise ImportError("converter_example_plugin.broken fails to import on purpose")
