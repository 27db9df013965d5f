"""Engine-independent pieces of the loader: no Dagster, no Spark imports here."""
