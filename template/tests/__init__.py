"""The service's tests, run against the database TEST_DATABASE_URL names."""
