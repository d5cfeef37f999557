"""Fuzzing the bitstream parser and the server's request path; `python -m fuzz --help` (docs/reliability.md)."""
