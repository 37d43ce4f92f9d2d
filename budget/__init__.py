"""Budget Manager's domain core and public Python API."""
