"""Offline corpus synthesis, training and int8 export (needs the ``train`` extra)."""
