"""Built-in backends, one module each, registered through the ``converter_register_backends`` hook."""
