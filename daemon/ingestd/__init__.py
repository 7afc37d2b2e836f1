"""ingestd: turn scraped TikTok search extracts into a local, deduplicated video library."""

__version__ = "0.1.0"
