"""Import and export of Hugging Face checkpoint directories."""
