"""Business rules. Services raise domain errors, never HTTP exceptions."""
