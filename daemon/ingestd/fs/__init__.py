"""Filesystem edge: safe extract reads, part files, atomic publish, the watcher."""
