"""Operations: what the pipeline tells the people who run it. Alerts
(:mod:`anime_pipeline.ops.notify`, no Dagster import) and Prometheus metrics
(:mod:`anime_pipeline.ops.metrics`, read from the instance and the ledger; served by
``anime-pipeline metrics serve``, :mod:`anime_pipeline.ops.cli`)."""
