"""Stand-in for ``timm.models`` (see the package docstring)."""
