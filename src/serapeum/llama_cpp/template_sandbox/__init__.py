"""The bounded Jinja sandbox that renders a GGUF file's chat template (untrusted input).

Jinja2's ``ImmutableSandboxedEnvironment`` already keeps a template away from Python internals
and from mutating the values passed in; this package adds bounds that no template can walk
around:

* **Time and steps.** The parsed template is rewritten before it is compiled so that every
  loop iteration, comparison, ``~`` concatenation, output piece, filter, test, call and
  arithmetic operator first passes a checkpoint that counts a step and checks a wall-clock
  deadline. Nothing else in a template repeats, so no construct runs unchecked for long.
* **Size.** Every value the template builds (by operators, filters, method calls, literals,
  slices, captured blocks) is measured as it is made: a string, or the text a container
  would print as, may not exceed a per-value bound, and every filter or method that could
  allocate far more than its inputs (``center``, ``indent``, ``format``, ``%``, ``join``,
  ``replace``, ``tojson(indent=)``, ``batch``, ``slice``, ``lipsum``, ``str.ljust``, ...) is
  checked *before* it runs. Integers are bounded in bits.
* **Memory.** All the characters the template creates count against one allocation budget
  for the render, so storing many large values (in a namespace, in recursion) cannot grow
  the process without bound.

The modules, each with one job:

* ``limits``: the bounds, scaled to the conversation, and the exception that says one was hit;
* ``budget``: what one render has spent (steps, time, characters), found by every checkpoint;
* ``formats``: checks on ``%`` and ``str.format`` format strings;
* ``checks``: checks on Python methods (``str.ljust``, ``join``, ...) and on operators;
* ``filter_checks``: checks on Jinja's filters, run before each filter;
* ``checkpoints``: the functions the rewritten template calls at each checkpoint;
* ``rewrite``: the parse-time bounds and the rewriter that inserts the checkpoints;
* ``filters``: the bounded filters, tests and globals a template may use;
* ``environment``: the sandboxed environment that ties all of these together.

The public API is in ``serapeum.llama_cpp.chat_template``; nothing here is meant to be
imported from outside this package and that module.
"""
