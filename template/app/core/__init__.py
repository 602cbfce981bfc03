"""Configuration, database, security and other cross-cutting pieces."""
