"""The producer's desk: a small web app over the review use cases (``pipeline/review.py``).

Thin routes (``app``) over services (``services``) over the existing use cases; tokens, scopes,
sessions and CSRF in ``auth``; signed, expiring download links in ``signing``; the settings the
CLI reads from the environment in ``config``. No Dagster import.
"""
