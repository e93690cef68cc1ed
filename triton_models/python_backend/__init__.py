"""Triton Python-backend models; each file is copied as ``model.py`` into a model repository."""
