"""Operations: what the pipeline tells the people who run it (no Dagster import)."""
