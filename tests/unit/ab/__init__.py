"""Unit tests of the experiment statistics engine and its command line."""
