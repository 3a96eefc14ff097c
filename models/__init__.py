"""Models shipped with kwstream: NAME.tflite beside its card NAME.json, and training recipes."""
