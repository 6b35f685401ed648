"""batchpipe: run large LLM jobs through batch APIs as a resumable, crash-safe pipeline."""

__version__ = "0.1.0"
