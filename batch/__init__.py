"""bertbc's batch scoring: label an archive with an exported version on Apache Beam RunInference.

The same SavedModel TF Serving loads (raw strings in, so the tokenizer and windows inside the graph are what
the archive gets), batched by Beam, on the DirectRunner here and on Flink, Spark or Dataflow when the archive
outgrows one machine. Inputs are read through ``corpus`` (class folders, CSV/TSV, JSONL, Parquet); nothing of
``trainer`` is imported. See batch/README.md.
"""
