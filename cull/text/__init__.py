"""Text semantics: how text is normalised and split into words, spaces and other characters."""
