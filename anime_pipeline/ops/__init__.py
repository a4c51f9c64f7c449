"""Operating the pipeline: Prometheus metrics (:mod:`anime_pipeline.ops.metrics`) and their
command (``anime-pipeline metrics serve``, :mod:`anime_pipeline.ops.cli`)."""
