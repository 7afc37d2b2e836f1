"""Persistence: the manifest. `base` is what every backend meets; `manifest` is the SQLite one
(the only code that speaks SQL)."""
