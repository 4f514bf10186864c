"""Models: the tiny Llama family with its locally trained tokenizer for the embedded benchmark; save/load."""
