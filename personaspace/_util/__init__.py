"""Foundations with no knowledge of models: atomic file writes (io), where files live (paths), statistics
(stats), the OpenAI-compatible HTTP client (http) and argument checks (checks). Imports nothing above
:mod:`personaspace.errors`."""
