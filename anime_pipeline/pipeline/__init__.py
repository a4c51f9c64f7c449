"""The use cases of the pipeline, one module per stage, over a storage and plain settings.

``catalog`` (register episodes), ``planning`` (shot plan, audio manifest, compute plan),
``clips`` (render shots), ``delivery`` (composite, package). The Dagster assets call these and
only add what Dagster needs (partitions, metadata, logs); the CLI, tests and benchmarks can call
them directly. No Dagster import here.
"""
