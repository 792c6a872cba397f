"""Locust load test for the bertbc REST API (see loadtest/README.md); run it with `locust -f loadtest/locustfile.py`."""
