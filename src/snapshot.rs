//! Everything that reloads, built once per generation and swapped atomically.
