"""serapeum.core: LLM types, base classes, output parsers and the plugin contracts.

Nothing in this package imports ``llama_cpp``: it is what plugin authors and other
engines code against.
"""
