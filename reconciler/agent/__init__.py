"""Stage: agent — runs ON the managed machine. STANDARD LIBRARY ONLY, Python >= 3.6.

It reports facts and the inventory document (``reconciler.api.inventory``, as plain JSON) and
installs exact pins it is given; it never decides what is approved. It is shipped as one zipapp
(``make agent``) to machines that have nothing but python3, so it may not import anything outside
``reconciler.agent`` (import-linter enforces this, vermin checks the Python version).
"""

AGENT_VERSION = "0.1.0"
