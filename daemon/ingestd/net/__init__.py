"""Network edge: the only code that imports httpx/httpcore."""
