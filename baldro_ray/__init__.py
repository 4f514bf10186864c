"""baldro-ray: BalDRO LLM unlearning on Ray Train, Ray Data, Ray Tune and MLflow."""

__version__ = "0.1.0"
