"""Patchwarden: SSM Patch Manager semantics as a GitOps reconciler.

The package is laid out as the pipeline (docs/architecture.md); import-linter keeps imports
flowing one way:
``cli`` → ``report`` → ``sources`` → ``evaluation`` → ``defaults`` → ``api``. ``agent`` stands
alone (standard library only) because it is shipped to managed machines.
"""

__version__ = "0.1.0"
