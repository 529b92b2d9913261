"""Command-line entry points. Each module has `main(argv) -> int`, so tests call it directly."""
