"""Code every package shares and that belongs to none of them: file I/O and the real-asset cache."""
