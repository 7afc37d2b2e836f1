"""Operator tools behind the CLI: status views, item lists, log following."""
