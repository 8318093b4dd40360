"""Triton and the router beside the servers a user would run instead, under the same Locust load."""
