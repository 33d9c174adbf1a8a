"""Prefect flows and deployments: they only wire domain functions together."""
