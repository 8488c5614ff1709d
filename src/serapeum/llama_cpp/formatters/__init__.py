"""Seed-compatible import paths for the Llama 2, Llama 3 and Mistral prompt formatters.

The formatters themselves live in plugin distributions (``serapeum-formatters-llama``
and ``serapeum-formatters-mistral``); these modules re-export them so that code
written against the seed keeps working.
"""
