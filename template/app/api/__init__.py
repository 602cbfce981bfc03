"""HTTP layer: dependencies and routes."""
