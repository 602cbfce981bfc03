"""Building blocks of bench/run.py: processes, the database, the service, wrk and the report."""
