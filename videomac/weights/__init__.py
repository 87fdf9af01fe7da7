"""The published-weights registry (``registry.json``), shipped as package data."""
