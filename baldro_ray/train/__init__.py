"""Ray Train worker loops (fine-tuning, unlearning) and their shared pieces; the only package that calls ray.train."""
