"""Data: sources of unlearning splits (TOFU, MUSE, plain files) behind one interface, and their readers."""
