"""``python -m serapeum.llama_cpp``: the same as the ``serapeum-llama-cpp`` command."""

import sys

try:
    from serapeum.llama_cpp.cli import main
except KeyboardInterrupt:  # Ctrl-C while importing: the same one line and status as in a run
    print("serapeum-llama-cpp: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
