"""Data access: the only place that builds SQL."""
