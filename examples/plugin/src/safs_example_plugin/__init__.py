"""An example safs plugin; its entry points are declared in pyproject.toml."""
