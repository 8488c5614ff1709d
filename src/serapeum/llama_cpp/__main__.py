"""``python -m serapeum.llama_cpp``: the same as the ``serapeum-llama-cpp`` command."""

from serapeum.llama_cpp.cli import main

raise SystemExit(main())
