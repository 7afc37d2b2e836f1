"""Persistence: the SQLite manifest (the only code that speaks SQL)."""
