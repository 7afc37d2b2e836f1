"""Persistence: the manifest. `base` is what every backend meets; `manifest` is the SQLite one,
`postgres` the PostgreSQL one (psycopg, an optional extra), the only code that speaks SQL;
`merging` is the half of a merge they share; `open` picks the backend for a location."""
