"""The bundled examples: configs and the data they read, each with its licence in SOURCE.md.
Installed as `stillroom.examples`; `stillroom example NAME DIR` copies one out."""
