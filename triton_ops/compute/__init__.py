"""NumPy reference implementations of all of the library's math. Importable with no GPU and no Triton."""
