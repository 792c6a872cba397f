"""Dev server speaking TensorFlow Serving's REST API (`python -m serving --help`), plus a tiny client."""
