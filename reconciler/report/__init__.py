"""Stage: report — what people and machines see: tables, JSON/YAML, later CSV/HTML/S3, events.

Reads evaluation results; never decides anything. May import every inner stage.
"""
